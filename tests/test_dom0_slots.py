"""dom0's balloon slots against a whole-array reference: the same slots taken and given back."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from iommu_core.xen.toolstack import Dom0Slots


class WholeArraySlots(Dom0Slots):
    """The obvious version: scan every slot on each take, test every slot on each give-back."""

    def take(self, n):
        free = np.flatnonzero(~self.taken)[:n]
        if len(free) < n:
            raise ValueError("too few slots")
        self.taken[free] = True
        return self.pages[free]

    def give_back(self, gfns):
        self.taken[np.isin(self.pages, gfns)] = False


def _take(slots, n):
    try:
        return slots.take(n)
    except ValueError:
        return None


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=40), seed=st.integers(0, 2**32))
def test_slots_match_a_whole_array_reference(ops, seed):
    ram = (np.array([0x40000, 0x80000]), np.array([0x3000, 0x2000]))       # two banks: 4,096 slots or so
    fast, ref = Dom0Slots(ram, -1, 0), WholeArraySlots(ram, -1, 0)
    rng = np.random.default_rng(seed)
    held = []
    for take, n in ops:
        if take:
            got, want = _take(fast, n), _take(ref, n)
            assert (got is None) == (want is None)
            if got is not None:
                assert np.array_equal(got, want)
                held.append(got)
        elif held:
            back = held.pop(int(rng.integers(len(held))))
            back = np.concatenate((back[rng.random(len(back)) < 0.7], [5, 0x40001]))   # and pages it does not hold
            fast.give_back(back)
            ref.give_back(back)
        assert np.array_equal(fast.taken, ref.taken)
