"""The device pool's part of report.md: per device the samples served, busy fraction and
samples/s, the pipe bytes per sample, and ``device_throughput.png`` (each device's samples/s
over the run, in time bins)."""

from __future__ import annotations

from pathlib import Path

PICTURE = "device_throughput.png"


def device_lines(stats: list[dict], bytes_per_sample: float | None, scenario: str) -> list[str]:
    """Markdown lines of the per-device section."""
    total = sum(s["samples"] for s in stats) or 1
    dispatch = ("one batcher per device (its own batch timeout), each batch to the least-loaded device"
                if scenario == "Server" else "each device takes the next batch when it is free")
    lines = ["", "## Devices", "",
             (f"{len(stats)} worker(s), one per device; samples go by index (shared uint8 set), "
              f"{dispatch}."), "",
             "| worker | device | cores | samples | share | batches | busy | samples/s |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for s in stats:
        cores = f"{s['cores'][0]}-{s['cores'][-1]}" if len(s["cores"]) > 1 else str(s["cores"][0])
        lines.append(f"| {s['worker']} | {s['device']} | {cores} | {s['samples']} | "
                     f"{100 * s['samples'] / total:.0f}% | {s['batches']} | {100 * s['busy_fraction']:.0f}% | "
                     f"{s['samples_per_s']:.2f} |")  # fmt: skip
    if bytes_per_sample is not None:
        lines += ["", f"Pipe bytes per sample (indices out, valid detections back): {bytes_per_sample:.0f}"]
    if scenario in ("SingleStream", "MultiStream"):
        lines += ["", f"{scenario} has one query in flight: it runs on one device at a time."]
    lines += ["", f"Per-device throughput over the run: {PICTURE}"]
    return lines


def throughput_picture(stats: list[dict], path: str | Path, bins: int = 20) -> None:
    """Each device's samples/s over the run (completions in ``bins`` equal time bins)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    end = max((t for s in stats for t, _ in s["done"]), default=0.0) or 1.0
    width = end / bins
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for s in stats:
        counts = [0] * bins
        for t, n in s["done"]:
            counts[min(int(t / width), bins - 1)] += n
        ax.step([width * (k + 1) for k in range(bins)], [c / width for c in counts], where="pre",
                label=f"{s['worker']}: {s['device']}")  # fmt: skip
    ax.set_xlabel("seconds since the first batch")
    ax.set_ylabel("samples/s")
    ax.set_title("per-device throughput")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_device_report(folder: str | Path, stats: list[dict], bytes_per_sample: float | None,
                        scenario: str) -> None:  # fmt: skip
    """Append the section to ``folder/report.md`` and draw the picture there."""
    folder = Path(folder)
    with open(folder / "report.md", "a") as f:
        f.write("\n".join(device_lines(stats, bytes_per_sample, scenario)) + "\n")
    throughput_picture(stats, folder / PICTURE)
