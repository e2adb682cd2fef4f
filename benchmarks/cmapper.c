/* A C mapper: the yardstick the engine's big maps are held to (benchmarks/cmapper.py).
 *
 * Arm LPAE with a 4 KiB granule, one root table at page 0 of `mem`, every table
 * 512 entries; it writes 4 KiB leaves only and keeps no counters. Batched, it
 * walks from the root once per level-3 table an extent touches; per page, once
 * per page. Missing tables come from the top of the pool, as the engine's do.
 */
#include <stdint.h>

#define ENTRIES 512
#define DESC_TABLE 3ULL     /* a table descriptor, and a level-3 page descriptor */
#define OA_MASK 0x0000FFFFFFFFF000ULL

static int64_t level3_table(uint64_t *mem, int64_t cap, int64_t *top, uint64_t base, int start, int64_t pg)
{
    int64_t page = 0;
    for (int lvl = start; lvl < 3; lvl++) {
        uint64_t *slot = &mem[page * ENTRIES + ((pg >> (9 * (3 - lvl))) & (ENTRIES - 1))];
        if (!*slot) {
            if (*top >= cap)
                return -1;
            *slot = (base + (uint64_t)(*top)++ * 4096) | DESC_TABLE;
        }
        page = (int64_t)(((*slot & OA_MASK) - base) >> 12);
    }
    return page;
}

/* Map extents of pages (with `clear`, write zeros instead: unmap); returns the leaves
 * written, or -1 if the pool is full. */
int64_t map_extents(uint64_t *mem, int64_t cap, int64_t *top, uint64_t base, int start,
                    const int64_t *iova_pg, const int64_t *pa_pg, const int64_t *npages, int64_t n,
                    uint64_t attrs, int per_page, int clear)
{
    int64_t written = 0;
    for (int64_t e = 0; e < n; e++) {
        int64_t pg = iova_pg[e], end = pg + npages[e], delta = pa_pg[e] - pg;
        while (pg < end) {
            int64_t stop = per_page ? pg + 1 : (pg | (ENTRIES - 1)) + 1;
            if (stop > end)
                stop = end;
            int64_t t = level3_table(mem, cap, top, base, start, pg);
            if (t < 0)
                return -1;
            uint64_t *leaf = &mem[t * ENTRIES];
            for (int64_t p = pg; p < stop; p++)
                leaf[p & (ENTRIES - 1)] = clear ? 0 : ((uint64_t)(p + delta) << 12) | attrs | DESC_TABLE;
            written += stop - pg;
            pg = stop;
        }
    }
    return written;
}
