"""Build polycoder-nano's training corpus from code that installs from this machine's
registries (Debian packages, PyPI source distributions, npm packages), without installing any of
it: packages are downloaded and unpacked under .corpus/.

    python nano/build_corpus.py [--out .corpus] [--bytes-per-language 3000000]

Writes .corpus/train/<Language>/<package>/... and .corpus/heldout/<Language>/<package>/...
(one file in 20 per language by content hash, never trained on), and nano/manifest.json:
package, version, license, and files and bytes per language and split. Exact duplicates are
dropped. Re-running with the same package versions gives the same corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from polycoder_ls.evaluation.corpus import language_of_file, read_source

DEBIAN = [
    "libpython3.11-stdlib",  # Python
    "golang-1.19-src",  # Go
    "openjdk-17-source",  # Java (src.zip)
    "libruby3.1",  # Ruby
    "php-symfony-console",  # PHP
    "php-twig",
    "php-pear",
    "librust-serde-dev",  # Rust
    "librust-regex-dev",
    "librust-clap-dev",
    "librust-syn-dev",
    "libboost1.81-dev",  # C++
]
PYPI = [
    "zstandard==0.25.0",  # C
    "cffi==2.0.0",
    "greenlet==3.5.6",  # C++
    "pythonnet==3.0.5",  # C#
]
NPM = ["lodash@4.17.21", "express@4.21.2", "acorn@8.14.0", "commander@12.1.0", "rxjs@7.8.2"]
MAX_FILE_BYTES = 200_000
HELD_OUT_EVERY = 20
MAX_HELD_OUT_BYTES = 150_000
MANIFEST = Path(__file__).resolve().parent / "manifest.json"


def run(*command: str, cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _debian(package: str, downloads: Path, unpacked: Path) -> dict[str, str]:
    if not list(downloads.glob(f"{package}_*.deb")):
        run("apt-get", "download", package, cwd=downloads)
    deb = sorted(downloads.glob(f"{package}_*.deb"))[-1]
    target = unpacked / package
    if not target.exists():
        run("dpkg-deb", "-x", str(deb), str(target), cwd=downloads)
        for archive in target.rglob("src.zip"):
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(archive.parent / "src")
    version = deb.name.split("_")[1]
    copyright_file = next(target.glob("usr/share/doc/*/copyright"), None)
    license_name = "see the package's copyright file"
    if copyright_file is not None:
        found = re.search(r"^License:\s*(\S.*)$", copyright_file.read_text(errors="replace"), re.M)
        license_name = found.group(1).strip() if found else license_name
    return {"source": "debian", "package": package, "version": version, "license": license_name}


def _unpack_tar(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")


def _pypi(requirement: str, downloads: Path, unpacked: Path) -> dict[str, str]:
    name, version = requirement.split("==")
    archives = list(downloads.glob(f"{name}-{version}.tar.gz"))
    if not archives:
        run(
            sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
            requirement, "-d", str(downloads), cwd=downloads,
        )  # fmt: skip
        archives = list(downloads.glob(f"{name}-{version}.tar.gz"))
    target = unpacked / name
    if not target.exists():
        _unpack_tar(archives[0], target)
    info = next(target.glob("*/PKG-INFO")).read_text(errors="replace")
    found = re.search(r"^License(?:-Expression)?:\s*(\S.*)$", info, re.M)
    license_name = found.group(1).strip() if found else "see the package"
    return {"source": "pypi", "package": name, "version": version, "license": license_name}


def _npm(spec: str, downloads: Path, unpacked: Path) -> dict[str, str]:
    name, version = spec.rsplit("@", 1)
    tarball = downloads / f"{name}-{version}.tgz"
    if not tarball.exists():
        run("npm", "pack", spec, "--silent", cwd=downloads)
    target = unpacked / name
    if not target.exists():
        _unpack_tar(tarball, target)
    package_json = json.loads((target / "package" / "package.json").read_text())
    license_name = str(package_json.get("license", "see the package"))
    return {"source": "npm", "package": name, "version": version, "license": license_name}


def _fetch(out: Path) -> list[tuple[dict[str, str], Path]]:
    downloads, unpacked = out / "downloads", out / "unpacked"
    downloads.mkdir(parents=True, exist_ok=True)
    unpacked.mkdir(parents=True, exist_ok=True)
    if any(not list(downloads.glob(f"{package}_*.deb")) for package in DEBIAN):
        # Stale package lists would fetch older versions than the manifest's: another corpus.
        run("apt-get", "update", cwd=downloads)
    fetched = [(_debian(p, downloads, unpacked), unpacked / p) for p in DEBIAN]
    fetched += [(_pypi(r, downloads, unpacked), unpacked / r.split("==")[0]) for r in PYPI]
    fetched += [(_npm(s, downloads, unpacked), unpacked / s.rsplit("@", 1)[0]) for s in NPM]
    return fetched


def build(out: Path, bytes_per_language: int) -> dict[str, object]:
    fetched = _fetch(out)
    for split in ("train", "heldout"):
        shutil.rmtree(out / split, ignore_errors=True)
    seen: set[str] = set()
    used: dict[str, int] = {}
    held_bytes: dict[str, int] = {}
    packages = []
    for info, root in fetched:
        counts: dict[str, dict[str, int]] = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            language = language_of_file(path)
            text = read_source(path) if language else None
            if language is None or text is None or len(text.encode()) > MAX_FILE_BYTES:
                continue
            digest = hashlib.sha256(text.encode()).hexdigest()
            size = len(text.encode())
            if digest in seen or used.get(language.name, 0) + size > bytes_per_language:
                continue
            seen.add(digest)
            used[language.name] = used.get(language.name, 0) + size
            held = int(digest, 16) % HELD_OUT_EVERY == 0
            held = held and held_bytes.get(language.name, 0) + size <= MAX_HELD_OUT_BYTES
            split = "heldout" if held else "train"
            if held:
                held_bytes[language.name] = held_bytes.get(language.name, 0) + size
            target = out / split / language.name / info["package"] / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            row = counts.setdefault(language.name, {"trainFiles": 0, "heldoutFiles": 0, "bytes": 0})
            row[f"{split}Files"] += 1
            row["bytes"] += size
        packages.append({**info, "languages": counts})
    return {
        "bytesPerLanguage": bytes_per_language,
        "heldOutEvery": HELD_OUT_EVERY,
        "languages": dict(sorted(used.items())),
        "packages": packages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".corpus"))
    parser.add_argument("--bytes-per-language", type=int, default=3_000_000)
    args = parser.parse_args()
    manifest = build(args.out.resolve(), args.bytes_per_language)
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest["languages"], indent=2))


if __name__ == "__main__":
    main()
