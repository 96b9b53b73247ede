"""Release hygiene: one version, no symlinks, no generated files or machine paths in git, and each
ROS package folder building and installing everything on its own with colcon."""

import os
import re
import shutil
import subprocess
import sys

import pytest

import dart_ros

PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the dart_ros package folder
REPO = os.path.dirname(PKG)


def _version(package_xml: str) -> str:
    with open(package_xml) as f:
        return re.search(r"<version>\s*([^<\s]+)\s*</version>", f.read()).group(1)


def test_one_version_source():
    version = _version(os.path.join(PKG, "package.xml"))
    assert dart_ros.__version__ == version
    assert _version(os.path.join(REPO, "dart_ros_interfaces", "package.xml")) == version  # released together
    setup_py = open(os.path.join(PKG, "setup.py")).read()
    assert "package_version()" in setup_py and not re.search(r"version\s*=\s*['\"]", setup_py)


def _git_files():
    try:
        out = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [line.split(None, 3) for line in out.splitlines()]


def test_no_symlinks_generated_files_or_machine_paths_in_git():
    entries = _git_files()
    assert not [e[3] for e in entries if e[0] == "120000"], "symlinks are tracked"
    paths = [e[3] for e in entries]
    assert "setup.bash" not in paths
    assert not [p for p in paths if p.endswith((".pyc", ".egg-info"))]
    hits = subprocess.run(["git", "grep", "-lF", REPO], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert not hits, f"this checkout's absolute path appears in {hits}"


def test_the_repository_root_is_no_package():
    for name in ("package.xml", "setup.py", "pyproject.toml", "CMakeLists.txt"):
        assert not os.path.exists(os.path.join(REPO, name)), name


def _copy_alone(name: str, dest: str) -> str:
    """The package folder as an extracted archive would give it: its own files, links kept as links."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "install", "log", ".pytest_cache")
    target = os.path.join(dest, name)
    shutil.copytree(os.path.join(REPO, name), target, symlinks=True, ignore=ignore)
    return target


def _colcon_build(src: str, ws: str) -> str:
    if shutil.which("colcon") is None:
        if os.environ.get("DART_REQUIRE_ROS") == "1":
            pytest.fail("colcon is not installed")
        pytest.skip("colcon is not installed")
    prefix = sys.prefix  # the pip-installed ROS packages (tools/setup.sh)
    env = dict(os.environ)
    env["AMENT_PREFIX_PATH"] = prefix + (os.pathsep + env["AMENT_PREFIX_PATH"] if env.get("AMENT_PREFIX_PATH") else "")
    env["CMAKE_PREFIX_PATH"] = prefix + (os.pathsep + env["CMAKE_PREFIX_PATH"] if env.get("CMAKE_PREFIX_PATH") else "")
    install = os.path.join(ws, "install")
    cmd = [
        "colcon",
        "--log-base",
        os.path.join(ws, "log"),
        "build",
        "--base-paths",
        src,
        "--build-base",
        os.path.join(ws, "build"),
        "--install-base",
        install,
        "--merge-install",
        "--event-handlers",
        "console_direct-",
        "--cmake-args",
        "-DBUILD_TESTING=OFF",
        f"-DPython3_EXECUTABLE={sys.executable}",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return install


@pytest.mark.ros
@pytest.mark.slow
def test_the_node_package_builds_and_installs_alone(tmp_path):
    src = _copy_alone("dart_ros", str(tmp_path / "src"))
    install = _colcon_build(src, str(tmp_path / "ws"))
    share = os.path.join(install, "share", "dart_ros")
    for rel in (
        "package.xml",
        "launch/detector.launch.py",
        "config/vit_h.yaml",
        "config/dart.rviz",
        "offline/benchmark.py",
    ):
        assert os.path.isfile(os.path.join(share, rel)), rel
    assert os.path.isfile(os.path.join(install, "share", "ament_index", "resource_index", "packages", "dart_ros"))
    for exe in ("detector_node", "detector_lifecycle_node", "image_player", "bag_play"):
        assert os.path.isfile(os.path.join(install, "lib", "dart_ros", exe)), exe
    site = [os.path.join(r, "detector.py") for r, _, files in os.walk(install) if "detector.py" in files]
    assert any(p.endswith(os.path.join("dart_ros", "detector.py")) for p in site)


@pytest.mark.ros
@pytest.mark.slow
def test_the_interfaces_package_builds_alone(tmp_path):
    src = _copy_alone("dart_ros_interfaces", str(tmp_path / "src"))
    install = _colcon_build(src, str(tmp_path / "ws"))
    found = [r for r, _, files in os.walk(install) if "_set_classes.py" in files]
    assert found, "no generated Python module for SetClasses"
    assert os.path.isfile(os.path.join(install, "share", "dart_ros_interfaces", "srv", "SetClasses.srv"))


def test_each_package_carries_its_license_and_the_repository_its_notice():
    for folder in (REPO, PKG, os.path.join(REPO, "dart_ros_interfaces")):
        text = open(os.path.join(folder, "LICENSE")).read()
        assert "Apache License" in text and "Version 2.0" in text, folder
    for xml in (os.path.join(PKG, "package.xml"), os.path.join(REPO, "dart_ros_interfaces", "package.xml")):
        assert "<license>Apache-2.0</license>" in open(xml).read()
    notice = open(os.path.join(REPO, "NOTICE")).read()
    assert "SAM License" in notice and "sam3" in notice


def _imports(folder: str) -> set:
    """Top-level modules imported anywhere under folder (the library and its tools)."""
    import ast

    found = set()
    for root, _, names in os.walk(folder):
        for name in names:
            if not name.endswith(".py"):
                continue
            tree = ast.parse(open(os.path.join(root, name), encoding="utf-8").read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_package_xml_and_requirements_declare_every_import():
    """A ROS import needs a package.xml dependency (rosdep installs it); any other third-party import a
    requirement (requirements.txt, or an extra of setup.py for the optional tools)."""
    import importlib.metadata as md

    xml = open(os.path.join(PKG, "package.xml")).read()
    ros_deps = set(re.findall(r"<(?:depend|exec_depend)>\s*([^<\s]+)\s*<", xml))
    with open(os.path.join(PKG, "requirements.txt")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    required = {_norm(re.split(r"[<>=!~\[; ]", line)[0]) for line in lines if line}
    setup_py = open(os.path.join(PKG, "setup.py")).read()
    extras_src = setup_py.split("extras_require")[1].split("},")[0]
    extras = {_norm(re.split(r"[<>=!~\[; ]", r)[0]) for r in re.findall(r'"([A-Za-z][^"]*)"', extras_src)}
    dists = md.packages_distributions()
    # where the owner is not installed on every machine: the gpu extra; Triton comes with CUDA torch
    known = {"nvmath": ["nvmath-python"], "triton": ["torch"]}
    missing = []
    for module in sorted(_imports(os.path.join(PKG, "dart_ros")) | _imports(os.path.join(PKG, "offline"))):
        if module in sys.stdlib_module_names or module in ("dart_ros", "__future__"):
            continue
        owners = [_norm(d) for d in known.get(module) or dists.get(module, [])]
        ros = module in ros_deps or module.endswith(("_msgs", "_interfaces"))
        ros = ros or any(o.startswith("ros-") for o in owners)
        if ros:
            if module not in ros_deps:
                missing.append(f"{module}: no <depend>/<exec_depend> in package.xml")
        elif not owners:
            missing.append(f"{module}: not installed here, cannot tell its distribution")
        elif not (set(owners) & (required | extras)):
            missing.append(f"{module} ({', '.join(owners)}): in neither requirements.txt nor an extra")
    assert not missing, missing
    # and the rosdep keys for distribution-packaged Python modules match requirements.txt
    keys = {"python3-numpy": "numpy", "python3-opencv": "opencv-python-headless", "python3-pil": "pillow",
            "python3-psutil": "psutil", "python3-scipy": "scipy", "python3-tqdm": "tqdm",
            "python3-yaml": "pyyaml"}  # fmt: skip
    for key, req in keys.items():
        assert (f"<exec_depend>{key}</exec_depend>" in xml) == (req in required), key
