"""The Grafana dashboard and the Prometheus alert rules that ship with the package.

``streamsentinel dashboards DIR`` writes them out for provisioning::

    DIR/streamsentinel.json                          Grafana dashboard (a provisioned dashboards folder)
    DIR/alerts.yml                                   Prometheus alert rules (``rule_files:``)
    DIR/provisioning/dashboards/streamsentinel.yml   Grafana dashboard provider
    DIR/provisioning/datasources/prometheus.yml      Grafana Prometheus datasource (``$PROMETHEUS_URL``)

In the wheel they live in ``streamsentinel/_assets/``; in a source checkout (an editable install)
they are read from the repository's ``dashboards/`` folder, their one source.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ASSETS = (
    "streamsentinel.json",
    "alerts.yml",
    "provisioning/dashboards/streamsentinel.yml",
    "provisioning/datasources/prometheus.yml",
)
"""The files written, relative to the target folder."""


def assets_dir() -> Path:
    """The folder holding :data:`ASSETS`: the wheel's ``_assets``, else the checkout's ``dashboards``.

    Raises:
        FileNotFoundError: neither exists (a broken install).
    """
    here = Path(__file__).resolve().parent
    for folder in (here / "_assets", here.parents[1] / "dashboards"):
        if (folder / ASSETS[0]).is_file():
            return folder
    raise FileNotFoundError("streamsentinel's dashboard files are missing from this install")


def write_assets(target: Path, *, overwrite: bool = False) -> list[Path]:
    """Copy every file of :data:`ASSETS` under ``target`` (created); the paths written.

    Raises:
        FileExistsError: a file is there already and ``overwrite`` is False (nothing is written).
    """
    source = assets_dir()
    paths = [target / name for name in ASSETS]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists (--force overwrites)")
    for name, path in zip(ASSETS, paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, path)
    return paths


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="streamsentinel dashboards",
        description="Write the Grafana dashboard, its provisioning files and the Prometheus alert rules.",
    )
    parser.add_argument("directory", type=Path, help="the folder to write into (created)")
    parser.add_argument("--force", action="store_true", help="overwrite files already there")
    args = parser.parse_args(list(argv))
    try:
        paths = write_assets(args.directory, overwrite=args.force)
    except OSError as exc:
        print(f"streamsentinel dashboards: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0
