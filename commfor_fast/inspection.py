"""`commfor-fast inspect DATA`: what a converted folder holds, as lines of text.

Everything comes from `manifest.json` (no shard is opened): the sets with their
shards and sizes, counts per generator, label, original and stored format, the
resolutions, the format-bias warnings, the rejects, and how the folder was made.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from commfor_fast.console_summary import count_table
from commfor_fast.convert.merge import balance_lines, format_bias_warnings, human_bytes, label_table
from commfor_fast.safetext import printable
from commfor_fast.shards import CARD_NAME, FORMAT_VERSION, MANIFEST_NAME, RAW_FORMAT, Manifest

TOP_RESOLUTIONS = 5  # most frequent resolutions listed
MAX_REJECTS = 3  # rejects listed by name


def describe(folder: Path | str, whole: bool = False) -> list[str]:
    """The lines `commfor-fast inspect` prints for a convert output folder: the counts per
    generator summarised beyond `console_summary.ALL_ROWS_UP_TO` generators (every one
    with `whole`, `inspect --all`)."""
    folder = Path(folder)
    m = Manifest.load(folder)
    stored = (f"pre-resized to a shorter side of {m.preresize} (uint8 RGB pixels as {RAW_FORMAT.upper()})" if m.preresize
              else "verbatim (the sources' bytes; lossless PNG where normalised)")
    card = (f"{CARD_NAME} (datasets.load_dataset reads the folder)" if (folder / CARD_NAME).is_file()
            else f"no {CARD_NAME}: re-run the convert command to write it")
    lines = [f"{folder}: {m.format} v{FORMAT_VERSION}, written by commfor-fast {m.package_version}, seed {m.seed}",
             f"command: {m.command}", f"images: {stored}", f"dataset card: {card}", "", "sets:"]
    for name, info in m.sets.items():
        nbytes = sum(s.bytes for s in info.shards)
        per_image = f", {human_bytes(nbytes / info.num_samples)} per image" if info.num_samples else ""
        lines.append(f"  {name}: {info.num_samples} images in {len(info.shards)} shard(s), "
                     f"{human_bytes(nbytes)}{per_image}")
    sets = m.sets.items()
    counts = {n: i.counts for n, i in sets}
    lines += ["", *count_table(label_table(f"{len(m.generators)} generator(s)", counts), counts, noun="generators",
                               where=f"commfor-fast inspect {folder} --all, or {MANIFEST_NAME}'s counts per set",
                               whole=whole)]
    lines += ["", *label_table("original format", {n: i.formats for n, i in sets})]
    lines += ["", *label_table("stored as", {n: i.stored for n, i in sets})]
    resolutions: Counter[str] = Counter()
    for info in m.sets.values():
        for size, by_label in info.resolutions.items():
            resolutions[size] += sum(by_label.values())
    top = ", ".join(f"{size} ({n})" for size, n in resolutions.most_common(TOP_RESOLUTIONS))
    lines += ["", f"resolutions: {len(resolutions)} distinct; most frequent: {top or 'none'}"]
    if m.rejects:
        named = "; ".join(f"{r['item']}: {r['reason']}" for r in m.rejects[:MAX_REJECTS])
        lines.append(f"rejected: {len(m.rejects)} image(s), e.g. {named}")
    if m.normalised:
        lines.append("stored as lossless PNG: " + ", ".join(f"{n} ({reason})" for reason, n in m.normalised.items()))
    lines += balance_lines(m.balance, m.settings["val_frac"])
    warnings = list(dict.fromkeys(m.warnings + format_bias_warnings(m.sets)))
    lines += [f"warning: {w}" for w in warnings]
    return [printable(line) for line in lines]  # names from the data may hold escape codes or newlines
