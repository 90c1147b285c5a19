"""deploy/docker/Dockerfile, checked without a container engine: its runtime stage installs the
Debian package of every shared library the built adaptd and adaptctl load (besides those from
the venv, which it copies), and it runs the README's own setup script."""
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "deploy/docker/Dockerfile").read_text()
IN_SLIM_BASE = {"libc6", "libgcc-s1", "libstdc++6"}


def runtime_packages() -> set[str]:
    stage = DOCKERFILE.split("AS runtime", 1)[1]
    install = stage.split("apt-get install", 1)[1].split("&&", 1)[0]
    return {w for w in install.replace("\\", " ").split() if not w.startswith("-")}


def packages_loaded(binary: pathlib.Path) -> set[str]:
    assert binary.exists(), f"build {binary.name} first (ctest runs this after the build)"
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    paths = {m for m in re.findall(r"=> (/\S+)", ldd) if ".venv" not in m}
    # Debian's merged /usr: a package lists its file under /lib/... or /usr/lib/...
    forms = {p: {p, p.replace("/lib/", "/usr/lib/", 1) if p.startswith("/lib/") else p} for p in paths}
    found = subprocess.run(["dpkg", "-S", *set().union(*forms.values())], capture_output=True, text=True).stdout
    owner = {line.split(": ", 1)[1]: line.split(":")[0] for line in found.splitlines()}
    unowned = [p for p, f in forms.items() if not f & owner.keys()]
    assert not unowned, f"no Debian package owns {unowned}"
    return {owner[q] for f in forms.values() for q in f if q in owner}


def test_runtime_stage_has_every_library_the_binaries_load():
    need = set()
    for name in ("adaptd", "adaptctl"):
        need |= packages_loaded(ROOT / "build/bin" / name)
    missing = need - IN_SLIM_BASE - runtime_packages()
    assert not missing, f"add to the Dockerfile's runtime apt-get install: {sorted(missing)}"


def test_build_stage_uses_the_readme_scripts_and_runs_as_non_root():
    assert "RUN bash scripts/setup.sh" in DOCKERFILE
    assert re.search(r"^USER 10001$", DOCKERFILE, re.M)
    assert "HEALTHCHECK" in DOCKERFILE and '"health"]' in DOCKERFILE
