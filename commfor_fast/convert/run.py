"""`convert`: plan, convert this node's unfinished partitions in parallel, then merge.

Every run, first or resumed, on any node, does the same steps:
1. check the settings and scan the sources (the folders' scan is read from
   OUT/listing.json.gz when none of them changed, `listing.py`); compute the plan and
   its fingerprint;
2. record the plan in OUT/plan.json (a different plan there is refused unless
   `--overwrite`) and a fresh folder scan in OUT/listing.json.gz;
3. find this node's partitions (`p % num_nodes == node_rank`) without a valid
   done-marker, delete what they left and convert them in `--workers` processes;
4. when every partition of every node has its marker, pack the partitions' validation
   samples into full shards (`pack.py`) and write manifest.json (a node
   that finishes while others are still converting says so, and exits 0); it names
   every node that converted partitions (`merge.node_records`) and no local folder
   (`portable.py`), so a copied folder reads the same anywhere.
So resuming after a kill, or finishing on another machine, is running the same
command again. That includes a worker process killed on its own (the kernel's OOM
killer): the run stops with an error saying so instead of waiting for the lost
partition forever, and the rerun redoes only the unfinished partitions. Ctrl-C stops
the workers at once and deletes what the unfinished partitions left (temporary files
included), so the rerun finds only finished partitions.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import shlex
import socket
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Callable
from pathlib import Path

from commfor_fast.convert.balance_checks import find_failing
from commfor_fast.convert.card import write_dataset_card
from commfor_fast.convert.listing import write_listing
from commfor_fast.convert.pack import pack_validation
from commfor_fast.convert.merge import dry_run_lines, merge, summary_lines
from commfor_fast.convert.parts import CHECKS_NAME, check_out, clear_partitions, prepare_out, read_marker
from commfor_fast.convert.plan import PartitionTask, make_plan, scan_sources
from commfor_fast.convert.settings import ConvertSettings, check_settings, resolve_sources
from commfor_fast.convert.worker import WorkerConfig, convert_partition, init_pool_worker, inputs_sha256, run_in_pool
from commfor_fast.errors import UserError
from commfor_fast.fileio import check_writable
from commfor_fast.portable import portable_command, portable_manifest
from commfor_fast.progress import Progress
from commfor_fast.shards import CARD_NAME, MANIFEST_NAME, Manifest, write_json_atomic
from commfor_fast.threads import map_threads

POLL_S = 0.2  # how often the main process collects progress from the workers
WORKER_DIED = ("a conversion worker died (out of memory?): rerun the same command to resume; "
               "lower --workers or --partition-size")


def _run_partitions(tasks: list[PartitionTask], config: WorkerConfig, workers: int, progress: Progress) -> None:
    """Convert `tasks`; in this process for one worker, else in a spawned process pool.

    `ProcessPoolExecutor` notices a worker that dies without a word (SIGKILL, the OOM
    killer) and fails its partition with `BrokenProcessPool`, which becomes a
    `UserError`; `multiprocessing.Pool` would wait for that partition forever.
    Workers exit by themselves when this process dies (`worker._report`).
    """
    if workers == 1 or len(tasks) == 1:
        for task in tasks:
            convert_partition(task, config, progress.update)
        return
    ctx = mp.get_context("spawn")  # no inherited threads or open files: safe with pyarrow's thread pools
    reports = ctx.Queue()

    def drain() -> None:
        while True:
            try:
                progress.update(*reports.get_nowait())
            except queue.Empty:
                return

    others = set(mp.active_children())
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx, initializer=init_pool_worker,
                             initargs=(config, reports, os.getpid())) as pool:
        pending = {pool.submit(run_in_pool, task) for task in tasks}
        try:
            while pending:
                done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
                drain()
                for future in done:
                    future.result()  # re-raises a worker's exception here
        except BrokenProcessPool:
            pool.shutdown(wait=False, cancel_futures=True)
            raise UserError(WORKER_DIED) from None
        except KeyboardInterrupt:
            # Workers ignore SIGINT (`init_pool_worker`): stop them here, at once. Letting
            # them unwind could block one on the progress queue's lock while this process
            # waits for it; the caller deletes what their partitions left.
            for process in set(mp.active_children()) - others:
                process.kill()
                process.join()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        except BaseException:
            # On an error, start no further partition; those running finish (and count on resume).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    # Leaving `with` waits for the pool to stop: a worker still starting then never
    # finds the pool's queues gone (a `SemLock ... FileNotFoundError` traceback).
    drain()


def _finished(out: Path, task: PartitionTask, fingerprint: str, sources: tuple[tuple[str, str, str], ...],
              verify_hashes: bool) -> bool:
    """Whether a partition is done and intact: its marker and shards check out and, with
    `--verify-hashes`, the shards' and the sources' sha256 match what the marker recorded
    (a marker written without the flag recorded no source hash, so its partition is redone)."""
    marker = read_marker(out, task.index, fingerprint, check_index=True, check_hash=verify_hashes)
    if marker is None:
        return False
    return not verify_hashes or marker.get("inputs_sha256") == inputs_sha256(task, sources)


def _same_data(a: Manifest, b: Manifest) -> bool:
    """Whether two manifests describe the same shards (the command line that made them may differ)."""
    return (a.to_json()["sets"], a.generators, a.preresize, a.seed) == (b.to_json()["sets"], b.generators,
                                                                       b.preresize, b.seed)


def _recorded_manifest(out: Path, log: Callable[[str], None]) -> Manifest | None:
    """The manifest.json of `out` if there is one and it reads; None otherwise."""
    if not (out / MANIFEST_NAME).is_file():
        return None
    try:
        return Manifest.load(out)
    except UserError as exc:  # damaged after the fact: the partitions checked out, so it is rebuilt from them
        log(f"{out / MANIFEST_NAME} is unreadable: rebuilding it from the partitions, which check out ({exc})")
        return None


def convert(settings: ConvertSettings, command: str | None = None) -> Manifest | None:
    """Convert the sources into shards under `settings.out`.

    Returns the manifest, or None when partitions of other nodes are still missing
    (the last node to finish, or any rerun, writes the manifest) and with
    `settings.dry_run`, which prints what would be done and writes nothing. `command` is
    recorded in the manifest (default: this process's command line).
    """
    limits = check_settings(settings)
    command = portable_command(command if command is not None else shlex.join(sys.argv))  # as users type it
    settings = resolve_sources(settings)  # the same data gives the same plan, however its paths are typed
    if not settings.dry_run:  # before scanning: a folder that cannot be written is known now
        check_writable(settings.out, "--out")

    def log(line: str) -> None:
        if not settings.quiet:
            print(line, file=sys.stderr, flush=True)

    sources, units, listing = scan_sources(settings, limits)
    failing, checks = find_failing(settings, limits, sources, units) if settings.balance_checked else (None, None)
    plan = make_plan(settings, limits, sources, units, listing, failing)
    printed = plan.warnings()
    for warning in printed:
        log(f"warning: {warning}")
    sizes = ", ".join(f"{name} {n}" for name, n in plan.set_sizes.items())
    log(f"plan: {sum(plan.set_sizes.values())} samples ({sizes}) of {plan.scanned_samples} found, "
        f"{len(plan.generators)} generator(s), {len(plan.partitions)} partition(s)")
    if settings.dry_run:
        check_out(settings.out, plan.record(), settings.overwrite)  # what the real run would refuse at once
        print("\n".join(dry_run_lines(plan, settings, limits)), flush=True)
        return None

    out = settings.out
    prepare_out(out, plan.record(), plan.set_names, settings.overwrite)
    if plan.listing is not None:  # a fresh folder scan: reruns and other nodes read it instead of walking
        write_listing(out, plan.listing)
    if checks is not None:  # the same for --balance-checked's checks
        write_json_atomic(out / CHECKS_NAME, checks)
    mine = [t for t in plan.partitions if t.index % settings.num_nodes == settings.node_rank]
    sources = tuple((s.kind, s.given, s.root) for s in plan.sources)
    if settings.verify_hashes:
        unhashed = sum(1 for t in mine if (m := read_marker(out, t.index, plan.fingerprint, check_index=False,
                                                             check_hash=False)) and m.get("inputs_sha256") is None)
        if unhashed:
            log(f"note: {unhashed} partition(s) were converted without --verify-hashes, so no hash of their "
                "sources was recorded: converting them again")
    # With --verify-hashes this re-reads every finished shard and source byte: on `--workers` threads
    # (sha256 and reads release the GIL), with a bar; without it only indexes are parsed.
    threads = limits.workers if settings.verify_hashes else 1
    with Progress(len(mine), "check finished partitions", unit="partition",
                  enabled=settings.verify_hashes and not settings.quiet) as bar:
        finished = map_threads(lambda t: _finished(out, t, plan.fingerprint, sources, settings.verify_hashes),
                               mine, threads, bar)
    pending = [t for t, done in zip(mine, finished) if not done]
    recorded = _recorded_manifest(out, log) if not pending else None
    if pending:
        (out / MANIFEST_NAME).unlink(missing_ok=True)  # no longer complete
        node = f"node {settings.node_rank}/{settings.num_nodes}: " if settings.num_nodes > 1 else ""
        log(f"{node}converting {len(pending)} of {len(mine)} partition(s) ({len(mine) - len(pending)} done before)")
        clear_partitions(out, [t.index for t in pending], plan.set_names)  # what they left: redone from scratch
        config = WorkerConfig(
            out=out, fingerprint=plan.fingerprint, set_names=plan.set_names, shard_bytes=limits.shard_bytes,
            preresize=settings.preresize, max_pixels=settings.max_pixels, check=settings.check,
            dali_check=settings.dali_check, generator_ids=plan.generator_ids(),
            sources=sources, hash_inputs=settings.verify_hashes,
            node={"node_rank": settings.node_rank, "num_nodes": settings.num_nodes, "host": socket.gethostname(),
                  "workers": limits.workers, "command": command},
        )
        with Progress(sum(t.num_samples for t in pending), "convert", enabled=not settings.quiet) as progress:
            try:
                _run_partitions(pending, config, limits.workers, progress)
            except KeyboardInterrupt:  # Ctrl-C: leave only finished partitions, for the rerun to keep
                clear_partitions(out, [t.index for t in pending if read_marker(
                    out, t.index, plan.fingerprint, check_index=False, check_hash=False) is None], plan.set_names)
                raise
        log(progress.line())

    markers = [read_marker(out, t.index, plan.fingerprint, check_index=False, check_hash=False)
               for t in plan.partitions]
    missing = sum(m is None for m in markers)
    if missing:
        # said even with --quiet: exit 0 without a manifest.json needs this line
        print(f"node {settings.node_rank}/{settings.num_nodes} is done, but manifest.json is not written yet: "
              f"{missing} of {len(markers)} partitions of other nodes are unfinished; the last node to finish "
              "writes it (re-running this command also does)", file=sys.stderr, flush=True)
        return None
    packed = pack_validation(out, markers, limits.shard_bytes, recorded, settings.verify_hashes)
    manifest = portable_manifest(merge(plan, markers, settings, command, packed))
    if recorded is not None and _same_data(recorded, manifest):
        if (out / CARD_NAME).is_file():
            log(f"{out} is complete already")
            return recorded
        log(f"{out / CARD_NAME} is missing: writing it again")
        manifest = recorded  # keep the manifest as it was made
    elif recorded is not None:
        log(f"{out / MANIFEST_NAME} disagrees with the partitions' records (edited or damaged): rebuilding it")
    # The card reads a local replica's README.md (its licence) where this run found it,
    # not through the manifest, which names no local folder (`portable.py`).
    write_dataset_card(out, dataclasses.replace(manifest, sources=[source.summary for source in plan.sources]))
    manifest.save(out)
    for warning in manifest.warnings:
        if warning not in printed:
            log(f"warning: {warning}")
    for line in summary_lines(manifest):
        log(line)
    log(f"wrote {out / MANIFEST_NAME}")
    return manifest
