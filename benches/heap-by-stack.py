#!/usr/bin/env python3
"""Groups a heaptrack peak-heap profile by the innermost frames that are
not the allocator's, so a table of what holds a connection's memory can be
read off it.

    heaptrack_print -f HEAPTRACK.zst -F stacks.txt --flamegraph-cost-type peak
    c++filt < stacks.txt | benches/heap-by-stack.py --per 5000

prints bytes per unit (--per: the streams or connections held) for each
group of three frames, largest first. BENCHMARKS.md's heap tables add
these lines up by what they belong to.
"""
import argparse
import collections
import re
import sys

# Frames of allocation itself (the allocator, Vec and Box growth, bytes'
# reservation): skipped, so a line names who asked for the memory.
NOISE = re.compile(
    r"(^alloc$|alloc_impl|allocate|__rdl_alloc|GlobalAlloc|aligned_malloc|"
    r"finish_grow|grow_one|grow_amortized|reserve|box_new|^new<>|^new$|"
    r"push_mut|^push<>|insert_at|with_capacity|do_alloc|fallible|"
    r"new_uninitialized|resize_inner|reserve_rehash|prepare_resize|"
    r"exchange_malloc|^from_iter|spec_extend|to_vec|copy_from_slice|^from<>|"
    r"^into$|^clone|shallow_clone|promote_to_shared|RawVec|raw_vec|^grow|"
    r"^try_reserve|^extend|alloc::|<alloc|^insert<>|^insert$|resize|^put|"
    r"bytes_mut)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per", type=int, required=True, help="divide by this many")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--depth", type=int, default=3)
    args = parser.parse_args()
    groups: collections.Counter = collections.Counter()
    for line in sys.stdin:
        stack, _, cost = line.rstrip("\n").rpartition(" ")
        if not cost.isdigit():
            continue
        frames = [f.strip() for f in stack.rstrip(";").split(";") if f.strip()]
        # Drop the " (file.rs)" suffix before matching, and crate hashes.
        frames = [re.sub(r"\[[0-9a-f]{16}\]", "", f) for f in frames]
        kept = [f for f in frames if not NOISE.search(re.sub(r"\s*\([^()]*\)$", "", f))]
        groups[" < ".join(reversed(kept[-args.depth :]))] += int(cost)
    print(f"total {sum(groups.values()) / args.per:.0f} bytes per unit")
    for key, cost in groups.most_common(args.top):
        print(f"{cost / args.per:7.0f}  {key[:230]}")


if __name__ == "__main__":
    main()
