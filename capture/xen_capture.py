#!/usr/bin/env python3
"""Live capture of a real Xen's P2M, so anyone can re-check ../shared/xen-real.

Steps (each one skips work a previous run cached in capture/cache/):
  fetch   apt-get download Debian 12's arm64 Xen 4.17, its -dbg symbol map, the
          arm64 kernel, busybox-static and the toolstack; dpkg-deb -x each.
  build   a busybox initramfs for dom0 (toolstack, Xen modules, the domU's
          kernel and initramfs, capture/dom0-init.sh as /init) and a ~1 MiB
          one for the domU (capture/domu-init.sh).
  boot    qemu-system-aarch64 (TCG) with Xen as the kernel and dom0 loaded by
          guest-loader devices, logging the registers at the entry of
          p2m_set_entry (and a few landmark functions) with
          `-d cpu,nochain -dfilter`, under a hard time limit.
  parse   the QEMU log and the serial console into p2m_set_entry.csv.gz,
          p2m_events.csv and p2m_counters.csv, in the columns of
          ../shared/xen-real.

Only the standard library is used, so the host needs python3, apt-get,
dpkg-deb and qemu-system-aarch64 (Debian's qemu-system-arm) and nothing else.

    python3 capture/xen_capture.py [--out DIR]           # all steps
    python3 capture/xen_capture.py --parse-only DIR      # re-parse DIR's logs
"""
from __future__ import annotations

import argparse
import bisect
import csv
import gzip
import io
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("CAPTURE_CACHE", HERE / "cache"))

# Xen's and dom0's command lines, as in ../shared/xen-real/console.txt.
XEN_CMDLINE = "dom0_mem=1024M,max:1024M loglvl=all guest_loglvl=all console_timestamps=boot"
DOM0_CMDLINE = "console=hvc0 earlycon=xen rdinit=/init"
# Where guest-loader puts dom0's kernel and initramfs. Not 0x48000000: QEMU
# puts its own DTB at RAM base + 128 MiB and an initramfs there corrupts it
# (Xen then hits a BUG in free_heap_pages). The kernel Image (32 MiB) ends
# below 0x44000000, the DTB (1 MiB) at 0x48000000, the initramfs after it.
KERNEL_ADDR = 0x42000000
INITRD_ADDR = 0x4A000000
# `-nic none`: the default NIC (virtio-net-pci) wants efi-virtio.rom, which
# only the ipxe-qemu package has; it is a PCI device, so the device tree Xen
# sees is the same without it (checked against ../shared/xen-real/virt.dtb).
QEMU_MACHINE = ["-machine", "virt,virtualization=on,gic-version=3",
                "-cpu", "cortex-a57", "-smp", "2", "-m", "2048", "-nographic",
                "-nic", "none"]

# Functions whose entry is logged. p2m_set_entry is the subject; the others
# are landmarks (domain ids, phases, dumps) and named the same as the events
# of ../shared/xen-real/p2m_events.csv.
LANDMARKS = {
    "domain_create": "domain_create",          # x0 = domid
    "p2m_init": "p2m_init",                    # x0 = struct domain *
    "create_dom0": "create_dom0",
    "domain_unpause_by_systemcontroller": "unpause",  # x0 = d
    "setup.c#init_done": "setup.c#init_done",
    "p2m_dump_info": "p2m_dump_info",          # x0 = d (debug key 'q')
    "domain_kill": "domain_kill",              # x0 = d (restarted while -ERESTART)
    "relinquish_p2m_mapping": "relinquish_p2m_mapping",
}
# Hypercall handlers (Xen 4.17 on Arm): their entry names the hypercall a
# later p2m_set_entry on the same stack serves. memory_op and grant_table_op
# get their sub-op from x0 (cmd).
HYPERCALLS = {
    "do_memory_op": "memory_op", "do_grant_table_op": "grant_table_op",
    "do_domctl": "domctl", "do_sysctl": "sysctl", "do_xen_version": "xen_version",
    "do_console_io": "console_io", "do_event_channel_op": "event_channel_op",
    "do_sched_op": "sched_op", "do_set_timer_op": "set_timer_op",
    "do_vcpu_op": "vcpu_op", "do_hvm_op": "hvm_op", "do_multicall": "multicall",
    "do_platform_op": "platform_op", "do_arm_physdev_op": "physdev_op",
    "do_xsm_op": "xsm_op", "do_hypfs_op": "hypfs_op", "do_vm_assist": "vm_assist",
    "do_dm_op": "dm_op", "do_argo_op": "argo_op",
}
# xen/include/public/memory.h (cmd & MEMOP_CMD_MASK) and grant_table.h.
MEMORY_OPS = {0: "increase_reservation", 1: "decrease_reservation",
              2: "maximum_ram_page", 3: "current_reservation",
              4: "maximum_reservation", 5: "machphys_mfn_list",
              6: "populate_physmap", 7: "add_to_physmap", 8: "translate_gpfn_list",
              9: "memory_map", 10: "machine_memory_map", 11: "exchange",
              12: "machphys_mapping", 13: "set_memory_map", 14: "maximum_gpfn",
              15: "remove_from_physmap", 16: "set_pod_target", 17: "get_pod_target",
              18: "get_sharing_freed_pages", 19: "get_sharing_shared_pages",
              20: "paging_op", 21: "access_op", 22: "sharing_op",
              23: "add_to_physmap_batch", 24: "claim_pages",
              25: "machphys_compat_mfn_list", 26: "get_vnumainfo",
              27: "reserved_device_memory_map", 28: "acquire_resource",
              29: "get_vpt_info"}
GNTTAB_OPS = {0: "map_grant_ref", 1: "unmap_grant_ref", 2: "setup_table",
              3: "dump_table", 4: "transfer", 5: "copy", 6: "query_size",
              7: "unmap_and_replace", 8: "set_version", 9: "get_status_frames",
              10: "get_version", 11: "swap_grant_ref", 12: "cache_flush"}
# xen/arch/arm/include/asm/p2m.h
P2M_TYPES = ["invalid", "ram_rw", "ram_ro", "mmio_direct_dev", "mmio_direct_nc",
             "mmio_direct_c", "map_foreign_rw", "map_foreign_ro", "grant_map_rw",
             "grant_map_ro", "iommu_map_rw", "iommu_map_ro", "max_real_type"]
INVALID_MFN = (1 << 64) - 1
SYSTEM_DOMID = 0x7FF0           # DOMID_FIRST_RESERVED: idle, dom_xen, dom_io, ...
STACK_MASK = ~((1 << 15) - 1)   # Xen on Arm: STACK_SIZE 32 KiB, one stack per vCPU

SET_ENTRY_COLUMNS = ["seq", "domid", "gfn", "nr", "mfn", "type", "type_name", "access",
                     "caller", "hypercall", "phase", "rc"]
EVENT_COLUMNS = ["seq", "event", "domid", "detail", "count"]
COUNTER_COLUMNS = ["seq", "domid", "moment", "mappings_1g", "shattered_1g",
                   "mappings_2m", "shattered_2m", "mappings_4k"]


def log(msg: str) -> None:
    print(f"xen-capture: {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=True, **kw)


# ---------------------------------------------------------------- fetch

def package_names() -> list[str]:
    names = []
    for line in (HERE / "packages.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def fetch(cache: Path) -> dict[str, Path]:
    """Download the arm64 .debs (once) and extract each into cache/x/<pkg>."""
    debs, tree = cache / "debs", cache / "x"
    stamp = debs / "packages.done"
    wanted = package_names()
    if not (stamp.exists() and stamp.read_text().split() [:len(wanted)] == wanted):
        debs.mkdir(parents=True, exist_ok=True)
        if "arm64" not in subprocess.run(["dpkg", "--print-foreign-architectures"],
                                         capture_output=True, text=True).stdout.split():
            log("dpkg --add-architecture arm64")
            sh("dpkg", "--add-architecture", "arm64")
        log("apt-get update")
        sh("apt-get", "update", "-q", stdout=subprocess.DEVNULL)
        names = []
        for name in wanted:
            if name == "linux-image-arm64":
                # The metapackage only points to the versioned image.
                out = subprocess.run(["apt-cache", "depends", "linux-image-arm64:arm64"],
                                     capture_output=True, text=True, check=True).stdout
                name = re.search(r"Depends: (linux-image-[0-9][^:\s]*-arm64)", out).group(1)
            names.append(name)
        log(f"apt-get download {len(names)} arm64 packages into {debs}")
        for old in debs.glob("*.deb"):
            old.unlink()
        sh("apt-get", "download", "-q", *[f"{n}:arm64" for n in names], cwd=debs,
           stdout=subprocess.DEVNULL)
        stamp.write_text("\n".join(wanted + ["# resolved:"] + names) + "\n")
        shutil.rmtree(tree, ignore_errors=True)
    trees = {}
    for deb in sorted(debs.glob("*.deb")):
        pkg = deb.name.split("_", 1)[0]
        dest = tree / pkg
        if not dest.exists():
            tmp = tree / (pkg + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            sh("dpkg-deb", "-x", str(deb), str(tmp))
            tmp.rename(dest)
        trees[pkg] = dest
    return trees


# ---------------------------------------------------------------- ELF helpers

def elf_sections(data: bytes):
    """(name, type, flags, addr, offset, size, link) of every section of an ELF64 LE file."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [struct.unpack_from("<IIQQQQII", data, shoff + i * shentsize) for i in range(shnum)]
    stroff = raw[shstrndx][4]
    out = []
    for name, typ, flags, addr, off, size, link, _info in raw:
        end = data.index(b"\0", stroff + name)
        out.append((data[stroff + name:end].decode(), typ, flags, addr, off, size, link))
    return out


def elf_needed(data: bytes) -> list[str]:
    """DT_NEEDED sonames of an ELF file's bytes ([] for static or non-ELF files)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return []
    secs = elf_sections(data)
    out = []
    for _n, typ, _f, _a, off, size, link in secs:
        if typ != 6:  # SHT_DYNAMIC
            continue
        stroff = secs[link][4]
        for i in range(0, size, 16):
            tag, val = struct.unpack_from("<qQ", data, off + i)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", stroff + val)
                out.append(data[stroff + val:end].decode())
    return out


def call_sites(xen_syms: Path, target: int) -> tuple[list[int], list[int]]:
    """Addresses of every `bl target` and `b target` in Xen's code sections
    (AArch64: BL = 0x94000000 | imm26, B = 0x14000000 | imm26, offset*4)."""
    data = xen_syms.read_bytes()
    bl, b = [], []
    for _n, typ, flags, addr, off, size, _l in elf_sections(data):
        if typ != 1 or not flags & 0x4:  # PROGBITS, SHF_EXECINSTR
            continue
        words = struct.unpack_from(f"<{size // 4}I", data, off)
        for i, w in enumerate(words):
            op = w & 0xFC000000
            if op not in (0x94000000, 0x14000000):
                continue
            imm = w & 0x03FFFFFF
            if imm & 0x02000000:
                imm -= 1 << 26
            pc = addr + 4 * i
            if pc + 4 * imm == target:
                (bl if op == 0x94000000 else b).append(pc)
    return bl, b


class SymbolMap:
    """Xen's System.map-like file (the -dbg package's xen-syms-*.map)."""

    def __init__(self, path: Path):
        self.by_name: dict[str, int] = {}
        pairs = []
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3 or parts[1] not in "tTwW" or parts[2].startswith("."):
                continue
            addr = int(parts[0], 16)
            self.by_name.setdefault(parts[2], addr)
            pairs.append((addr, parts[2]))
        pairs.sort()
        self.addrs = [a for a, _ in pairs]
        self.names = [n for _, n in pairs]

    def name_of(self, addr: int) -> str:
        i = bisect.bisect_right(self.addrs, addr) - 1
        return self.names[i] if i >= 0 else hex(addr)


# ---------------------------------------------------------------- build

def cpio_newc(entries) -> bytes:
    """A cpio archive (newc, the initramfs format) from (path, mode, data, rdev)
    tuples: every file owned by root, mtime 0, so the archive is reproducible."""
    out = io.BytesIO()

    def put(name: str, mode: int, data: bytes, ino: int, rdev=(0, 0)):
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0))
        out.write(hdr.encode() + nb)
        out.write(b"\0" * (-(110 + len(nb)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        put(name, mode, data, ino, rdev)
    put("TRAILER!!!", 0, b"", 0)
    return out.getvalue()


class Tree:
    """Files for an initramfs, by path inside it."""

    def __init__(self):
        self.items: dict[str, tuple[int, bytes, tuple[int, int]]] = {}

    def dir(self, path: str):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.items.setdefault("/".join(parts[:i]), (stat.S_IFDIR | 0o755, b"", (0, 0)))

    def file(self, path: str, data: bytes, perm: int = 0o644):
        path = path.strip("/")
        if "/" in path:
            self.dir(path.rsplit("/", 1)[0])
        self.items[path] = (stat.S_IFREG | perm, data, (0, 0))

    def link(self, path: str, target: str):
        path = path.strip("/")
        if "/" in path:
            self.dir(path.rsplit("/", 1)[0])
        self.items[path] = (stat.S_IFLNK | 0o777, target.encode(), (0, 0))

    def node(self, path: str, major: int, minor: int):
        self.dir(path.rsplit("/", 1)[0])
        self.items[path.strip("/")] = (stat.S_IFCHR | 0o600, b"", (major, minor))

    def copy_tree(self, root: Path, sub: str, skip=()):
        """Copy root/sub into the tree, keeping symlinks."""
        base = root / sub
        if not base.exists():
            return
        for p in sorted(base.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if any(rel.startswith(s) for s in skip):
                continue
            if p.is_symlink():
                self.link(rel, os.readlink(p))
            elif p.is_dir():
                self.dir(rel)
            else:
                self.file(rel, p.read_bytes(), p.stat().st_mode & 0o777)

    def base(self):
        for d in ("proc", "sys", "dev", "tmp", "run", "root", "etc"):
            self.dir(d)
        self.node("dev/console", 5, 1)  # the kernel opens it before /init runs
        self.node("dev/null", 1, 3)

    def cpio_gz(self) -> bytes:
        entries = [(k, m, d, r) for k, (m, d, r) in sorted(self.items.items())]
        return gzip.compress(cpio_newc(entries), compresslevel=9, mtime=0)

    def check_needed(self):
        """Every DT_NEEDED of every ELF file must be in the tree's library dirs."""
        libdirs = ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib", "usr/lib")
        missing = set()
        for path, (mode, data, _r) in self.items.items():
            if not stat.S_ISREG(mode) or data[:4] != b"\x7fELF" or path.endswith(".ko"):
                continue
            for so in elf_needed(data):
                if not any(f"{d}/{so}" in self.items for d in libdirs):
                    missing.add(f"{so} (needed by /{path})")
        if missing:
            raise SystemExit("xen-capture: the initramfs lacks shared libraries:\n  "
                             + "\n  ".join(sorted(missing))
                             + "\nadd their packages to capture/packages.txt")


def build(trees: dict[str, Path], work: Path) -> dict[str, Path]:
    """Kernel Image, Xen, symbol map and dom0 initramfs, under work/."""
    work.mkdir(parents=True, exist_ok=True)
    kpkg = next(p for p in trees if p.startswith("linux-image-"))
    kroot = trees[kpkg]
    image = next((kroot / "boot").glob("vmlinuz-*"))
    kver = image.name[len("vmlinuz-"):]
    # Debian's arm64 vmlinuz is an uncompressed Image (libxc loads it as is).
    if image.read_bytes()[:2] == b"\x1f\x8b":
        kernel_bytes = gzip.decompress(image.read_bytes())
    else:
        kernel_bytes = image.read_bytes()
    busybox = (trees["busybox-static"] / "bin/busybox").read_bytes()

    # The domU's initramfs: busybox and its /init.
    domu = Tree()
    domu.base()
    domu.file("bin/busybox", busybox, 0o755)
    domu.file("init", (HERE / "domu-init.sh").read_bytes(), 0o755)
    domu_gz = domu.cpio_gz()

    # dom0's: busybox, the toolstack with its libraries, the Xen modules.
    dom0 = Tree()
    dom0.base()
    dom0.file("bin/busybox", busybox, 0o755)
    dom0.file("init", (HERE / "dom0-init.sh").read_bytes(), 0o755)
    for pkg, root in sorted(trees.items()):
        if pkg.startswith(("linux-image-", "xen-hypervisor-", "busybox")):
            continue
        dom0.copy_tree(root, "lib", skip=("lib/modules",))
        dom0.copy_tree(root, "usr/lib", skip=("usr/lib/xen-4.17/lib",  # pygrub, fsimage plugins
                                              "usr/lib/aarch64-linux-gnu/gconv",
                                              "usr/lib/debug"))
        dom0.copy_tree(root, "etc/xen", skip=("etc/xen/scripts",))
    mods = kroot / "lib/modules" / kver / "kernel/drivers/xen"
    for m in ("xen-privcmd.ko", "xenfs/xenfs.ko", "xen-evtchn.ko", "xen-gntdev.ko",
              "xen-gntalloc.ko"):
        data = (mods / m).read_bytes()
        # insmod does not resolve dependencies: the init loads them in order;
        # check here that the order covers what .modinfo asks for.
        dep = re.search(rb"depends=([^\0]*)", data).group(1).decode()
        assert dep in ("", "xen-privcmd"), (m, dep)
        dom0.file(f"lib/modules/{kver}/kernel/drivers/xen/{m}", data)
    dom0.file("root/domu/Image", kernel_bytes)
    dom0.file("root/domu/initrd.cpio.gz", domu_gz)
    dom0.file("root/domu/domu.cfg", (HERE / "domu.cfg").read_bytes())
    dom0.check_needed()

    out = {"kernel": work / "Image", "dom0_initrd": work / "dom0.cpio.gz",
           "domu_initrd": work / "domu.cpio.gz"}
    out["kernel"].write_bytes(kernel_bytes)
    out["domu_initrd"].write_bytes(domu_gz)
    out["dom0_initrd"].write_bytes(dom0.cpio_gz())
    hyp = trees["xen-hypervisor-4.17-arm64"]
    dbg = trees["xen-hypervisor-4.17-arm64-dbg"]
    out["xen"] = next((hyp / "boot").glob("xen-4.17-arm64"))
    out["map"] = next((dbg / "usr/lib/debug/boot").glob("xen-syms-*.map"))
    out["syms"] = next((dbg / "usr/lib/debug/boot").glob("xen-syms-*[!p]"))
    log(f"kernel {kver}: Image {len(kernel_bytes) // 1024} KiB; domU initramfs "
        f"{len(domu_gz) // 1024} KiB; dom0 initramfs {out['dom0_initrd'].stat().st_size // 1024} KiB")
    return out


# ---------------------------------------------------------------- boot

def trace_ranges(files: dict[str, Path]) -> tuple[str, dict[int, str], set[int]]:
    """-dfilter ranges: the entry of every traced function, plus every return
    site of a `bl p2m_set_entry` (there x0 is the call's return code)."""
    syms = SymbolMap(files["map"])
    entry = syms.by_name["p2m_set_entry"]
    bl, b = call_sites(files["syms"], entry)
    if b:
        log(f"note: {len(b)} tail call(s) of p2m_set_entry; their rc is not logged")
    what = {entry: "p2m_set_entry"}
    for name, label in {**LANDMARKS, **HYPERCALLS}.items():
        if name in syms.by_name:
            what[syms.by_name[name]] = name
    returns = {pc + 4 for pc in bl}
    addrs = sorted(set(what) | returns)
    return ",".join(f"0x{a:x}+4" for a in addrs), what, returns


def boot(files: dict[str, Path], out: Path, timeout: int, hold: int) -> float:
    """Boot Xen under QEMU, writing out/console.txt and out/qemu-trace.log."""
    qemu = shutil.which("qemu-system-aarch64")
    if not qemu:
        raise SystemExit("xen-capture: qemu-system-aarch64 not found "
                         "(apt-get install qemu-system-arm)")
    dfilter, _what, _ret = trace_ranges(files)
    trace = out / "qemu-trace.log"
    cmd = [qemu, *QEMU_MACHINE, "-no-reboot",
           "-kernel", str(files["xen"]), "-append", XEN_CMDLINE,
           "-device", f"guest-loader,addr=0x{KERNEL_ADDR:x},kernel={files['kernel']},"
                      f"bootargs={DOM0_CMDLINE} xcap_hold={hold}",
           "-device", f"guest-loader,addr=0x{INITRD_ADDR:x},initrd={files['dom0_initrd']}",
           "-d", "cpu,nochain", "-dfilter", dfilter, "-D", str(trace)]
    (out / "qemu-cmdline.txt").write_text(" ".join(
        a if " " not in a else repr(a) for a in cmd) + "\n")
    log(f"booting Xen under QEMU (time limit {timeout} s); console in {out / 'console.txt'}")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    done = False
    with open(out / "console.txt", "w", encoding="utf-8", errors="replace") as con:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            con.write(f"[{time.monotonic() - t0:8.3f}] {line}\n")
            con.flush()
            if "XCAP: done" in line:
                done = True
    proc.wait()
    timer.cancel()
    elapsed = time.monotonic() - t0
    if not done:
        raise SystemExit(f"xen-capture: the guest did not finish (QEMU rc {proc.returncode} "
                         f"after {elapsed:.0f} s, limit {timeout} s); see {out / 'console.txt'}")
    log(f"QEMU finished in {elapsed:.0f} s")
    return elapsed


# ---------------------------------------------------------------- parse

REC_START = re.compile(r"^\s*PC=([0-9a-f]{16}) ")
REG = re.compile(r"(X\d\d|SP)=([0-9a-f]{16})")
EL = re.compile(r"PSTATE=[0-9a-f]{8} \S+ (?:\S+ )?EL(\d)")


def qemu_records(path: Path):
    """(pc, regs, el) for each register dump in a QEMU `-d cpu` log; regs maps
    X00..X30 and SP."""
    pc = regs = None
    with open(path, "r", errors="replace") as f:
        for line in f:
            m = REC_START.match(line)
            if m:
                pc, regs = int(m.group(1), 16), {}
            if regs is None:
                continue
            for name, val in REG.findall(line):
                regs[name] = int(val, 16)
            if line.startswith("PSTATE="):
                m = EL.match(line)
                yield pc, regs, int(m.group(1)) if m else -1
                pc = regs = None


def parse_trace(files: dict[str, Path], trace: Path):
    """Rows of p2m_set_entry.csv and p2m_events.csv from the QEMU log."""
    syms = SymbolMap(files["map"])
    _dfilter, what, returns = trace_ranges(files)
    calls, events = [], []
    seq = 0
    last_on_stack: dict[int, tuple] = {}     # for the re-entered-block duplicates
    hypercall_on_stack: dict[int, str] = {}
    pending_create: dict[int, int] = {}      # stack -> domid being created
    pending_rc: dict[tuple[int, int], list] = {}  # (stack, return address) -> row
    dom_of: dict[int, int] = {}              # struct domain * -> domid
    p2m_offset = None
    phase = "dom0-build"
    dropped = 0
    stats = {"records": 0, "not_el2": 0}

    def domid_of(d: int):
        return dom_of.get(d)

    def event(name, domid, detail):
        nonlocal seq
        if events and events[-1][1:4] == [name, domid, detail] and name == "domain_kill":
            events[-1][4] += 1       # domain_kill restarts (-ERESTART): one row, a count
        else:
            events.append([seq, name, domid, detail, 1])
        seq += 1

    for pc, regs, el in qemu_records(trace):
        stats["records"] += 1
        if el != 2:  # only Xen (EL2); a guest could run code at the same address
            stats["not_el2"] += 1
            continue
        stack = regs["SP"] & STACK_MASK
        key = (pc, tuple(sorted(regs.items())))
        if last_on_stack.get(stack) == key:
            dropped += 1   # QEMU logged the block twice (re-entered before its first insn)
            continue
        last_on_stack[stack] = key
        x = [regs[f"X{i:02d}"] for i in range(31)]
        caller = syms.name_of(x[30])
        name = what.get(pc)
        if pc in returns and name is None:
            row = pending_rc.pop((stack, pc), None)
            if row is not None:
                rc = x[0] & 0xFFFFFFFF
                row[-1] = rc - (1 << 32) if rc & 0x80000000 else rc
            continue
        if name == "p2m_set_entry":
            p2m = x[0]
            d = p2m & ~0xFFF       # struct domain is one xenheap page; p2m is inside
            domid = domid_of(d)
            if p2m_offset is None and domid is not None:
                p2m_offset = p2m - d
            t = x[4] & 0xFFFFFFFF
            mfn = x[3]
            row = [seq, "" if domid is None else domid, hex(x[1]), x[2],
                   "INVALID" if mfn == INVALID_MFN else hex(mfn), t,
                   P2M_TYPES[t] if t < len(P2M_TYPES) else f"type{t}",
                   x[5] & 0xFFFFFFFF, caller, hypercall_on_stack.get(stack, ""), phase, ""]
            calls.append(row)
            pending_rc[(stack, x[30])] = row
            seq += 1
        elif name in HYPERCALLS:
            label = HYPERCALLS[name]
            if label == "memory_op":
                label += ":" + MEMORY_OPS.get(x[0] & 0x3F, str(x[0] & 0x3F))
            elif label == "grant_table_op":
                label += ":" + GNTTAB_OPS.get(x[0] & 0xFFF, str(x[0] & 0xFFF))
            hypercall_on_stack[stack] = label
        elif name == "domain_create":
            domid = x[0] & 0xFFFF
            pending_create[stack] = domid
            event("domain_create", domid, caller)
            if domid < SYSTEM_DOMID and domid > 0:
                phase = f"domU{domid}-build"
        elif name == "p2m_init":
            domid = pending_create.get(stack)
            dom_of[x[0]] = domid
            event("p2m_init", domid, x[0])     # the p2m pointer is filled in below
        elif name == "create_dom0":
            event("create_dom0", "", caller)
        elif name == "setup.c#init_done":
            event("setup.c#init_done", "", caller)
        elif name == "domain_unpause_by_systemcontroller":
            domid = domid_of(x[0])
            event("unpause", domid, caller)
            if domid == 0:
                phase = "dom0-run"
            elif domid is not None and domid < SYSTEM_DOMID:
                phase = f"domU{domid}-run"
        elif name == "p2m_dump_info":
            event("p2m_dump_info", domid_of(x[0]), "")
        elif name == "domain_kill":
            domid = domid_of(x[0])
            event("domain_kill", domid, "")
            if domid is not None and 0 < domid < SYSTEM_DOMID:
                phase = f"domU{domid}-destroy"
        elif name == "relinquish_p2m_mapping":
            event("relinquish_p2m_mapping", "", caller)
    for ev in events:
        if ev[1] == "p2m_init":
            ev[3] = f"p2m=0x{ev[3] + (p2m_offset or 0):x}" if p2m_offset is not None \
                else f"d=0x{ev[3]:x}"
        ev[2] = "" if ev[2] is None else ev[2]
    stats.update(calls=len(calls), events=len(events), duplicates_dropped=dropped,
                 rc_missing=sum(1 for r in calls if r[-1] == ""))
    return calls, events, stats


DUMP_HEAD = re.compile(r"p2m mappings for domain (\d+) \(vmid \d+\):")
DUMP_LINE = re.compile(r"(1G|2M|4K) mappings: (\d+)(?: \(shattered (\d+)\))?")


def parse_counters(console: Path, events) -> list[list]:
    """Xen's counters from each 'q' dump printed on the serial console, in
    the order of the p2m_dump_info events (one per domain per dump)."""
    dumps = []          # [moment, domid, {level: (mappings, shattered)}]
    moment = None
    for line in console.read_text(errors="replace").splitlines():
        m = re.search(r"XCAP: dump (.+)$", line)
        if m:
            moment = m.group(1).strip()
            continue
        if "XCAP: dump-end" in line:
            moment = None
            continue
        m = DUMP_HEAD.search(line)
        if m:
            dumps.append([moment, int(m.group(1)), {}])
            continue
        m = DUMP_LINE.search(line)
        if m and dumps and len(dumps[-1][2]) < 3 and "(XEN)" in line:
            dumps[-1][2][m.group(1)] = (int(m.group(2)), int(m.group(3) or 0))
    dump_events = [e for e in events if e[1] == "p2m_dump_info"]
    if len(dump_events) != len(dumps):
        log(f"warning: {len(dumps)} dumps on the console but {len(dump_events)} "
            "p2m_dump_info entries in the trace; seq left empty")
        dump_events = [None] * len(dumps)
    rows = []
    for ev, (moment, domid, c) in zip(dump_events, dumps):
        if ev is not None and ev[2] != domid:
            raise SystemExit(f"xen-capture: dump of domain {domid} vs trace event {ev}")
        if moment is None:
            continue   # a dump nobody asked for (e.g. typed on the serial console)
        rows.append([ev[0] if ev else "", domid, moment, c["1G"][0], c["1G"][1],
                     c["2M"][0], c["2M"][1], c["4K"][0]])
    return rows


def write_outputs(out: Path, calls, events, counters) -> None:
    with gzip.open(out / "p2m_set_entry.csv.gz", "wt", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SET_ENTRY_COLUMNS)
        w.writerows(calls)
    for name, cols, rows in (("p2m_events.csv", EVENT_COLUMNS, events),
                             ("p2m_counters.csv", COUNTER_COLUMNS, counters)):
        with open(out / name, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(cols)
            w.writerows(rows)


def summary(calls, counters) -> str:
    from collections import Counter
    c = Counter((r[10], r[1], r[6]) for r in calls)
    lines = [f"{len(calls)} p2m_set_entry calls"]
    lines += [f"  {n:6d}  {ph:14s} d{d}  {t}" for (ph, d, t), n in sorted(c.items())]
    lines += ["counters (seq domid moment 1G sh1G 2M sh2M 4K):"]
    lines += ["  " + " ".join(str(v) for v in r) for r in counters]
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=os.environ.get("CAPTURE_OUT"),
                    help="output folder (default results/xen-capture/<timestamp>/)")
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("CAPTURE_TIMEOUT", 540)),
                    help="hard time limit for QEMU, seconds")
    ap.add_argument("--hold", type=int, default=15, help="seconds the domU runs")
    ap.add_argument("--keep-trace", action="store_true",
                    help="keep QEMU's register log (hundreds of MB) in the output folder")
    ap.add_argument("--parse-only", type=Path, metavar="DIR",
                    help="re-parse DIR/qemu-trace.log and DIR/console.txt")
    args = ap.parse_args(argv)
    t0 = time.monotonic()

    trees = fetch(CACHE)
    files = build(trees, CACHE / "build")
    if args.parse_only:
        out = args.parse_only
    else:
        out = args.out or REPO / "results" / "xen-capture" / time.strftime("%Y%m%d-%H%M%S")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        boot(files, out, args.timeout, args.hold)
    calls, events, stats = parse_trace(files, out / "qemu-trace.log")
    counters = parse_counters(out / "console.txt", events)
    write_outputs(out, calls, events, counters)
    if not args.keep_trace and not args.parse_only:
        (out / "qemu-trace.log").unlink()
    log(f"trace: {stats}")
    print(summary(calls, counters))
    log(f"wrote {out} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
