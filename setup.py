"""Build script of husarnet_ros: the hand-written Python package plus the ROS 2 interfaces (msg/, srv/).

The package is ament_python, so both `pip install --no-build-isolation .` (venv with the ROS 2 PyPI wheels)
and `colcon build` (workspace; ROS from a venv or from /opt/ros) run this file. Python cannot generate the
interface code itself, so `build_py` drives the generation-only CMake project in interfaces/
(rosidl_generate_interfaces): it configures, builds and installs it into a staging prefix, copies the
generated `husarnet_ros.msg` / `husarnet_ros.srv` packages and their typesupport extension modules next to
the hand-written modules, and adds every other staged file (typesupport libraries, ament index markers,
share/husarnet_ros/...) to `data_files`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_py import build_py

PACKAGE = "husarnet_ros"
HERE = Path(__file__).resolve().parent

# Executables for `ros2 run husarnet_ros <exe>` and launch_ros `Node(package="husarnet_ros", executable=...)`.
# Add a node here; entries whose module does not exist yet are skipped, so the list may run ahead of the code.
ROS_EXECUTABLES: dict[str, str] = {
    "peers_node": "husarnet_ros.ros.peers_node:main",
    "whitelist_node": "husarnet_ros.ros.whitelist_node:main",
    "hosts_node": "husarnet_ros.ros.hosts_node:main",
    "dds_node": "husarnet_ros.ros.dds_node:main",
}

# Command-line tools on PATH.
CONSOLE_SCRIPTS: dict[str, str] = {
    "husarnet-ros": "husarnet_ros.cli.main:main",
    "husarnet-ros-base-server": "husarnet_ros.cli.base_server:main",
    "husarnet-ros-dashboard": "husarnet_ros.cli.dashboard:main",
}

INSTALL_REQUIRES = [
    "pynacl>=1.5",
    "python-pytun>=2.4",
    "pyroute2>=0.7",
    "pyyaml>=6",
    "fastapi>=0.100",
    "uvicorn>=0.23",
    "httpx>=0.24",
    "pydantic>=2",
    "click>=8",
    "rich>=13",
    # Dashboard and Websetup (husarnet_ros/dashboard/): database, migrations, password hashing, web UI.
    "sqlalchemy>=2",
    "alembic>=1.12",
    "psycopg[binary]>=3.1",  # PostgreSQL by --database-url postgresql+psycopg://...
    "argon2-cffi>=23",
    "jinja2>=3.1",
    "python-multipart>=0.0.9",  # HTML forms of the web UI
]

DEV_REQUIRES = [
    "pytest>=8,<9",  # launch_testing 3.7 registers a pytest plugin with a hook argument pytest 9 removed
    "pytest-timeout>=2.2",
    "hypothesis>=6",
    "ruff>=0.5",
    "mypy>=1.10",
    "types-PyYAML",
    "schemathesis>=3.30",  # property tests of the control API's OpenAPI schema
    "atheris>=2.3",  # coverage-guided fuzzing of the decoders (test/fuzz/)
    "cyclonedds>=0.10",  # Cyclone DDS and its C library: checks the generated Cyclone XML (no rmw wheel)
    "vermin>=1.6",  # checks that the code runs on Python 3.10 (ROS 2 Humble)
    "playwright>=1.40",  # drives Debian's chromium in the Dashboard's web UI tests
]


def read_version() -> str:
    text = (HERE / PACKAGE / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no __version__ in {PACKAGE}/__init__.py")
    return match.group(1)


def module_exists(entry_point: str) -> bool:
    module = entry_point.split(":", 1)[0]
    base = HERE.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def available_ros_executables() -> dict[str, str]:
    return {name: target for name, target in ROS_EXECUTABLES.items() if module_exists(target)}


def ros_executable_script(name: str) -> str:
    """Name of the console script in bin/ that a lib/husarnet_ros/<name> wrapper runs."""
    return f"husarnet-ros-{name.replace('_', '-')}"


def rel(path: Path) -> str:
    # data_files sources relative to the working directory: old setuptools (Ubuntu's, for /opt/ros) rejects
    # absolute ones.
    return os.path.relpath(path, Path.cwd())


def files_in(folder: str, pattern: str) -> list[str]:
    return sorted(rel(p) for p in (HERE / folder).glob(pattern) if p.is_file())


def static_data_files() -> list[tuple[str, list[str]]]:
    entries = [
        ("share/ament_index/resource_index/packages", [rel(HERE / "resource" / PACKAGE)]),
        (f"share/{PACKAGE}", [rel(HERE / "package.xml")]),
        (f"share/{PACKAGE}/launch", files_in("launch", "*.py")),
        (f"share/{PACKAGE}/config", files_in("config", "*.yaml")),
    ]
    return [(dest, files) for dest, files in entries if files]


def ros_prefixes() -> list[str]:
    """Prefixes that hold ament_cmake and the ROS interface packages, for CMAKE_PREFIX_PATH."""
    prefixes: list[str] = []
    for var in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH"):
        prefixes += [p for p in os.environ.get(var, "").split(os.pathsep) if p]
    # Venv with the PyPI wheels: the venv itself is the ament prefix, even when nothing set the variables.
    if (Path(sys.prefix) / "share" / "ament_cmake" / "cmake").is_dir():
        prefixes.append(sys.prefix)
    return list(dict.fromkeys(prefixes))


def sync_tree(src: Path, dst: Path) -> None:
    """Copy src into dst, rewriting only changed files so CMake's incremental build stays incremental."""
    dst.mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in src.iterdir()}
    for stale in dst.iterdir():
        if stale.name not in wanted:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir():
            sync_tree(item, target)
        elif not target.exists() or target.read_bytes() != item.read_bytes():
            shutil.copy2(item, target)


def run(cmd: list[str], log: Path) -> None:
    with log.open("w", encoding="utf-8") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-60:])
        raise SystemExit(f"interface generation failed: {' '.join(cmd)}\n--- last lines of {log} ---\n{tail}")


class BuildPyWithInterfaces(build_py):
    """build_py that also generates the ROS interfaces and the ROS executable wrappers."""

    def run(self) -> None:
        super().run()
        build_temp = (
            Path(self.get_finalized_command("build").build_temp).resolve() / "husarnet_ros_interfaces"
        )
        stage = self.generate_interfaces(build_temp)
        self.ship_python_modules(stage / "pylib" / PACKAGE)
        data_files = self.distribution.data_files
        assert data_files is not None  # set in setup(); install_data reads this same list object
        data_files += self.staged_data_files(stage)
        data_files += self.executable_wrappers(build_temp / "executables")

    def generate_interfaces(self, build_temp: Path) -> Path:
        source, build, stage = build_temp / "src", build_temp / "build", build_temp / "stage"
        source.mkdir(parents=True, exist_ok=True)
        shutil.copy2(HERE / "interfaces" / "CMakeLists.txt", source / "CMakeLists.txt")
        shutil.copy2(HERE / "package.xml", source / "package.xml")
        for folder in ("msg", "srv"):
            sync_tree(HERE / folder, source / folder)
        if stage.exists():
            shutil.rmtree(stage)  # only what this build installs may be shipped
        build.mkdir(parents=True, exist_ok=True)
        prefixes = ros_prefixes()
        configure = [
            "cmake", "-S", str(source), "-B", str(build),
            f"-DCMAKE_INSTALL_PREFIX={stage}",
            f"-DCMAKE_PREFIX_PATH={';'.join(prefixes)}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DPYTHON_INSTALL_DIR=pylib",
            "-DBUILD_TESTING=OFF",
            "-DCMAKE_BUILD_TYPE=Release",
        ]  # fmt: skip
        self.announce("generating ROS interfaces with CMake (log in " + str(build_temp) + ")", level=2)
        run(configure, build_temp / "configure.log")
        run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 1)], build_temp / "build.log")
        run(["cmake", "--install", str(build)], build_temp / "install.log")
        return stage

    def ship_python_modules(self, generated: Path) -> None:
        """Put the generated msg/srv packages and typesupport extensions next to the hand-written modules."""
        target = Path(self.build_lib) / PACKAGE
        for folder in ("msg", "srv"):
            if (target / folder).exists():
                shutil.rmtree(target / folder)
            shutil.copytree(
                generated / folder,
                target / folder,
                ignore=shutil.ignore_patterns("*.c", "*.h", "__pycache__"),
            )
        # The generated __init__.py is empty: never let it replace the hand-written one.
        for extension in generated.glob("*.so"):
            shutil.copy2(extension, target / extension.name)

    def staged_data_files(self, stage: Path) -> list[tuple[str, list[str]]]:
        by_dir: dict[str, list[str]] = {}
        for path in sorted(stage.rglob("*")):
            if path.is_dir():
                continue
            dest = path.parent.relative_to(stage).as_posix()
            if not self.ship_staged(dest, path.name):
                continue
            by_dir.setdefault(dest, []).append(rel(path))
        return sorted(by_dir.items())

    @staticmethod
    def ship_staged(dest: str, name: str) -> bool:
        if dest == "pylib" or dest.startswith("pylib/"):
            return False  # Python modules go through build_lib (ship_python_modules)
        if dest == f"share/{PACKAGE}" and (
            name == "package.xml" or name.startswith(("local_setup.", "package."))
        ):
            return False  # package.xml comes from the source; colcon writes its own setup scripts
        if dest == f"share/{PACKAGE}/environment":
            return False  # ament shell hooks: colcon generates its own, a venv needs none
        return dest != "share/ament_index/resource_index/packages"  # from resource/, as for any ament_python

    @staticmethod
    def executable_wrappers(folder: Path) -> list[tuple[str, list[str]]]:
        # ros2 run and launch_ros look in <prefix>/lib/<package>/, pip and colcon put console scripts in
        # <prefix>/bin: a two-line wrapper bridges them, relocatable because the path is relative to itself.
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        wrappers = []
        for name in available_ros_executables():
            wrapper = folder / name
            wrapper.write_text(
                f'#!/bin/sh\nexec "$(dirname "$0")/../../bin/{ros_executable_script(name)}" "$@"\n',
                encoding="utf-8",
            )
            wrapper.chmod(0o755)
            wrappers.append(rel(wrapper))
        return [(f"lib/{PACKAGE}", wrappers)] if wrappers else []


class BinaryDistribution(Distribution):
    """The package ships compiled typesupport modules: its wheel is platform-specific."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    name=PACKAGE,
    version=read_version(),
    description="Encrypted peer-to-peer IPv6 overlay for robot fleets, integrated with ROS 2",
    license="Apache-2.0",
    maintainer="husarnet_ros maintainers",
    maintainer_email="maintainers@husarnet-ros.example",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"], exclude=[f"{PACKAGE}.msg*", f"{PACKAGE}.srv*"]),
    zip_safe=False,
    # The Dashboard's HTML templates and static files (its migrations are Python modules, found as packages).
    package_data={f"{PACKAGE}.dashboard": ["templates/*.html", "static/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": DEV_REQUIRES},
    data_files=static_data_files(),
    entry_points={
        "console_scripts": [f"{name} = {target}" for name, target in CONSOLE_SCRIPTS.items()]
        + [
            f"{ros_executable_script(name)} = {target}"
            for name, target in available_ros_executables().items()
        ],
        # `ros2 doctor` plug-in (where ros2doctor is installed): daemon, hnet0 address, base, DDS profile.
        "ros2doctor.checks": ["husarnet = husarnet_ros.ros.doctor:HusarnetCheck"],
        "ros2doctor.report": ["husarnet = husarnet_ros.ros.doctor:HusarnetReport"],
    },
    cmdclass={"build_py": BuildPyWithInterfaces},
    distclass=BinaryDistribution,
)
