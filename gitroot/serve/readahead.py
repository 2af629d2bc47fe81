"""Read-ahead across files: the next blobs a reader going through a tree in
order will ask for, loaded in other threads while the FUSE loop serves.

A cold full read of a root (``tar``, a backup, a first boot reading its
units and libraries) is a long run of first reads of files, one directory
after the other, each blob inflated and hashed before its first byte is
served.  The FUSE loop is one thread, and pygit2 holds the GIL while
libgit2 reads, so all of that ran on one core.  When the view sees a tree
read in order (RootView._first_read), it asks for the next files of a
depth-first walk (:meth:`Readahead.want`); worker threads load them (the
view's loader: a blob through libgit2 with the GIL released,
gitroot.git.rawodb, or a large one verified as a stream) and keep them
until the loop takes them (:meth:`Readahead.take`).  The view also asks,
with :meth:`Readahead.also`, for the libraries an executable it has just
served will need (RootView._elf_first_read): those go first, and what
nobody takes soon is dropped.

What it may cost is bounded: *budget* bytes loaded and not yet taken (a
reader that stops leaves at most that behind until the next want, which
drops what it no longer names; the view bounds the blobs it asks for by
size).  Anything a worker cannot load (missing, corrupt, a size that
differs) it leaves alone, and the loop reads that blob itself, the way it
reads every blob not asked for: so errors are found, logged and answered
in one place, and a blob served from here was checked exactly as one read
through pygit2 (the same libgit2, strict verification).
"""

import collections
import logging
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from gitroot.git.rawodb import RawOdb

log = logging.getLogger(__name__)

#: how long a blob loaded for also() waits to be taken (a dynamic loader
#: opens an executable's libraries within milliseconds of reading it)
EXTRA_SECONDS = 2.0


class Readahead:
    """Worker threads loading the blobs named by :meth:`want`, in order.

    *load(reader, oid, size)* does the loading, in a worker thread, with
    that thread's RawOdb: it returns what :meth:`take` hands over for the
    blob (its bytes, or a verified gitroot.git.blobstream.StreamedBlob),
    or None to leave the blob to the loop."""

    def __init__(self, readers: List[RawOdb],
                 load: Callable[[RawOdb, bytes, int], Optional[object]], budget: int):
        self._readers = readers            # one per worker thread
        self._load = load
        self._budget = budget
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()   # (oid, size, cost) to load
        self._busy: Set[bytes] = set()                          # oids being loaded
        # oid -> (loaded, cost, when asked for by also(), else 0)
        self._ready: Dict[bytes, Tuple[object, int, float]] = {}
        self._extra: Dict[bytes, float] = {}   # oid -> when also() asked for it
        self._held = 0                 # the cost of what is loaded or being loaded
        self._stop = False
        self._threads: List[threading.Thread] = []
        self.served = 0                # blobs handed over (for tests and the log)

    def want(self, items: Iterable[Tuple[bytes, int, int]]) -> None:
        """Load these (oid, size, cost in memory) next, in this order;
        forget what was asked before and is not named again."""
        items = list(items)
        with self._cond:
            named = {item[0] for item in items}
            for oid in [o for o in self._ready if o not in named]:
                self._held -= self._ready.pop(oid)[1]
            self._queue = collections.deque(
                item for item in items if item[0] not in self._ready
                and item[0] not in self._busy)
            self._extra.clear()
            self._start()
            self._cond.notify_all()

    def also(self, items: Iterable[Tuple[bytes, int, int]]) -> None:
        """Load these (oid, size, cost) before what is queued, without
        forgetting anything asked for before: blobs a program is about to
        ask for (the libraries of an executable being read).  What this
        loaded and nobody took within EXTRA_SECONDS is dropped at the next
        call, so blobs the kernel never asks for (their pages were still
        cached) cannot hold the budget for long."""
        now = time.monotonic()
        with self._cond:
            stale = [oid for oid, (_, _, when) in self._ready.items()
                     if when and now - when > EXTRA_SECONDS]
            for oid in stale:
                self._held -= self._ready.pop(oid)[1]
            queued = {item[0] for item in self._queue}
            new = [item for item in items if item[0] not in self._ready
                   and item[0] not in self._busy and item[0] not in queued]
            for item in reversed(new):
                self._queue.appendleft(item)
                self._extra[item[0]] = now
            if new:
                self._start()
                self._cond.notify_all()

    def _start(self) -> None:
        """Start the workers on first use (the daemon has forked by then)."""
        if not self._threads and self._queue:
            for n, reader in enumerate(self._readers):
                thread = threading.Thread(target=self._run, args=(reader,),
                                          name=f"gitroot-readahead-{n}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def take(self, oid: bytes) -> Optional[object]:
        """What was loaded for *oid* (waiting while it is being loaded), or
        None: the caller reads it itself."""
        with self._cond:
            while oid in self._busy:
                self._cond.wait()
            loaded = self._ready.pop(oid, None)
            if loaded is None:
                # not started yet: the caller reads it, and a worker must not
                for item in self._queue:
                    if item[0] == oid:
                        self._queue.remove(item)
                        break
                return None
            self._held -= loaded[1]
            self.served += 1
            self._cond.notify_all()
            return loaded[0]

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._queue.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
        if not any(thread.is_alive() for thread in self._threads):
            for reader in self._readers:
                reader.close()

    def _next(self) -> Optional[Tuple[bytes, int, int]]:
        with self._cond:
            while not self._stop and (not self._queue or self._held >= self._budget):
                self._cond.wait()
            if self._stop:
                return None
            item = self._queue.popleft()
            self._busy.add(item[0])
            self._held += item[2]
            return item

    def _run(self, reader: RawOdb) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            oid, size, cost = item
            loaded = None
            try:
                loaded = self._load(reader, oid, size)
            except Exception:      # anything at all: the loop reads it itself
                log.debug("read-ahead of %s failed", oid.hex(), exc_info=True)
            with self._cond:
                self._busy.discard(oid)
                if loaded is not None and not self._stop:
                    self._ready[oid] = (loaded, cost, self._extra.pop(oid, 0.0))
                else:
                    self._held -= cost
                self._cond.notify_all()
