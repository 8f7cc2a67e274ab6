// Reading a snapshot through its file mapping without dying of SIGBUS.
// A read of a mapped page the kernel can no longer fill (an I/O error on
// the disk, or the file truncated under the mapping) raises SIGBUS, which
// ends the process. While a range is guarded, such a fault inside it is
// caught: the page is replaced by a page of zeros, the read goes on (and
// sees zeros), and the range is marked, so the loader can treat the
// snapshot as damaged and fall back to an older one.
#ifndef PERENNIAL_MAPPING_GUARD_H
#define PERENNIAL_MAPPING_GUARD_H
#include <stddef.h>

/// Guards [start, start + length): returns a slot to pass to the other two,
/// or -1 when every slot is taken (then the range is not guarded).
int pk_mapping_guard(const void *start, size_t length);
/// Whether a read inside the slot's range failed since it was guarded.
int pk_mapping_guard_tripped(int slot);
/// Ends the guard (before the range is unmapped).
void pk_mapping_unguard(int slot);

#endif
