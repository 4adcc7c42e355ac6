"""MkDocs hook: the figures the pages show are the files that ship (``models/<dataset>/*.png``,
``models/micro/<dataset>/*.png``, ``reports/*.png``), added to the site from the repository as
they are, never copied into docs/."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

FIGURES = ("models/*/*.png", "models/micro/*/*.png", "reports/*.png")


def on_files(files, config):
    root = Path(config.config_file_path).parent
    for pattern in FIGURES:
        for path in sorted(root.glob(pattern)):
            files.append(File(path.relative_to(root).as_posix(), str(root), config.site_dir, config.use_directory_urls))
    return files
