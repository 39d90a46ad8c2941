"""The manual is tested like code: it builds with warnings as errors, its links resolve, its study files
validate, its command lines parse, its Python runs, its tables are what the current formatter prints from
stored results, and the reference it writes from the code covers the code."""
from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from docblocks import DOCS, blocks, pages
from helpers import REPO

from synthdata import studies
from synthdata.errors import SpecError
from synthdata.spec import STUDY_KINDS, parse_spec


def _generate():
    """docs/hooks/generate.py, the mkdocs hook, as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generate()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src") and value:
                self.links.append(value)


def _broken_links(site: Path) -> list[str]:
    """Every relative href/src of the built pages that names no file of the site."""
    broken = []
    for page in site.rglob("*.html"):
        if page.name == "404.html":  # the theme's page for any missing URL: its links are absolute, from the site's root
            continue
        parser = _Links()
        parser.feed(page.read_text())
        for link in parser.links:
            url = urlparse(link)
            if url.scheme or url.netloc or not url.path or link.startswith(("mailto:", "data:")):
                continue
            target = (page.parent / unquote(url.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)}: {link}")
    return broken


def test_the_site_builds_strict_and_every_internal_link_and_image_resolves(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=REPO,
                          capture_output=True, text=True, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (site / "reference" / "study-file" / "index.html").is_file()
    assert not _broken_links(site), _broken_links(site)[:20]
    # The generated reference is there: every command, every metric.
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert all(f"synthdata {c}" in cli for c in ("validate", "run", "pretrain", "prepare", "report", "detect"))
    assert "--quiet" in cli and "--no-progress" in cli and "--val-fraction" in cli


def test_the_readme_links_and_images_name_files_of_the_repository():
    text = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [t for t in targets if not urlparse(t).scheme and not (REPO / t).exists()]
    assert targets and not missing, missing
    assert len(text.splitlines()) <= 200


def _study_data(block_code: str, page: Path):
    """A yaml block's study: a snippet of a shipped file, a whole study, or a fragment of one (given a name)."""
    snippet = re.fullmatch(r'--8<-- "([^"]+)"\s*', block_code)
    data = yaml.safe_load((REPO / snippet.group(1)).read_text() if snippet else block_code)
    if not isinstance(data, dict) or "name" in data:
        return data
    kind = next((k for k in STUDY_KINDS if k in data), "loop")
    return {"name": "fragment", **({"kind": kind} if kind != "loop" else {}), **data}


def test_every_yaml_block_is_a_valid_study_file(tmp_path, monkeypatch):
    # Paths the shipped studies name (a data root the user provides, a model `synthdata pretrain` makes) stand in here.
    monkeypatch.chdir(tmp_path)
    for path in ("data/cifar10", "data/scale/real_60000_32", "runs/pretrained/digits_unet"):
        (tmp_path / path).mkdir(parents=True)
    checked, wrong = 0, []
    for page in pages():
        for block in blocks(page, "yaml"):
            try:
                parse_spec(_study_data(block.code, page), source=f"{page.name}")
                checked += 1
            except SpecError as err:
                wrong.append(str(err))
    assert checked >= 15 and not wrong, wrong


def _command_lines(code: str) -> list[str]:
    """The `synthdata ...` commands of a shell block: continuations joined, comments dropped, after `--` of ray job."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|;|\|", line.split(" #", 1)[0]):
            part = part.strip()
            if " -- synthdata " in part:
                part = "synthdata " + part.split(" -- synthdata ", 1)[1]
            if part.startswith("synthdata "):
                out.append(part)
    return out


def test_every_synthdata_command_line_parses_and_names_what_exists():
    parser = GEN.cli_parser()
    checked, wrong = 0, []
    for page in pages():
        text = page.read_text()
        for block in blocks(page):
            if block.lang not in ("bash", "sh", "console"):
                continue
            for line in _command_lines(block.code):
                try:
                    args = parser.parse_args(shlex.split(line)[1:])
                except SystemExit:
                    wrong.append(f"{page.name}: does not parse: {line}")
                    continue
                checked += 1
                study = getattr(args, "study", None)
                # A study is a shipped name, a file of the repository, or one the page makes first (`> file.yaml`).
                if study and args.command != "report" and not (
                        study in studies.names() or (REPO / study).exists() or f"> {study}" in text):
                    wrong.append(f"{page.name}: names a study nothing provides: {line}")
                for source in getattr(args, "generated", None) or []:
                    # Pasteable: the path exists, or another line of the page makes it or its folder (data/scale/...).
                    path = Path(source.split("=", 1)[-1])
                    others = text.replace(line, "")
                    made = [str(q) for q in (path, *path.parents) if len(q.parts) >= 2 and str(q) in others]
                    if not (REPO / path).exists() and not made:
                        wrong.append(f"{page.name}: --generated {path}: nothing on the page makes it")
    assert checked >= 20 and not wrong, wrong


PYTHON_PAGES = [p for p in pages() if any(b.mark is None for b in blocks(p, "python"))]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_python_blocks_run(page, tmp_path, monkeypatch):
    """A page's unmarked Python blocks, in order, in one namespace, in a fresh directory (as a notebook would)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    namespace: dict = {}
    for block in blocks(page, "python"):
        if block.mark is None:
            exec(compile(block.code, str(page), "exec"), namespace)


def test_python_blocks_are_marked_only_for_ray_or_a_gpu():
    marks = {b.mark for page in pages() for b in blocks(page, "python")}
    assert marks <= {None, "ray", "gpu"}, marks
    assert any(b.mark == "ray" for page in pages() for b in blocks(page, "python"))  # tests/test_plugins.py runs them


def test_no_issue_numbers_outside_the_change_log():
    texts = [*pages(), REPO / "bench" / "README.md", *sorted((REPO / "studies").glob("*.yaml"))]
    found = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in texts if p.name != "changelog.md"
             for m in re.finditer(r"\bissues? #?\d+", p.read_text(), re.I)]
    assert not found, found


def test_every_shipped_study_has_a_page_in_the_nav_and_a_row_in_the_readme():
    nav = (REPO / "mkdocs.yml").read_text()
    readme = (REPO / "README.md").read_text()
    for name in studies.names():
        assert (DOCS / "studies" / f"{name}.md").is_file(), name
        assert f"studies/{name}.md" in nav, name
        assert f"[{name}](docs/studies/{name}.md)" in readme, name


@pytest.mark.parametrize("page", sorted((DOCS / "studies").glob("*.md")), ids=lambda p: p.stem)
def test_a_study_pages_table_is_what_the_current_formatter_prints_from_its_stored_results(page):
    text = page.read_text()
    for match in GEN.RESULTS.finditer(text):
        assert match.group(1) == page.stem
        rendered = GEN.render_results(page.stem)
        if rendered is not None:
            assert match.group(2) == rendered, f"run `python docs/hooks/generate.py` to re-render {page.name}"


def test_the_results_mechanism_renders_a_stored_table(tmp_path, monkeypatch):
    """A results.csv dropped beside a page replaces its table with the formatter's; without one, the page is as written."""
    import pandas as pd

    from synthdata.results import format_table

    table = pd.DataFrame({"arm": ["replace/seed0", "replace/seed0"], "group": ["replace", "replace"],
                          "loop_type": ["replace", "replace"], "seed": [0, 0], "generation": [0, 1],
                          "fitted_variance": [1.0, 0.9]})
    monkeypatch.setattr(GEN, "DOCS", tmp_path)
    page = "<!-- results: mad_gaussian -->\n```text\nold table\n```\n<!-- /results -->\n"
    assert GEN.with_results(page) == page
    (tmp_path / "studies" / "mad_gaussian").mkdir(parents=True)
    table.to_csv(tmp_path / "studies" / "mad_gaussian" / "results.csv", index=False)
    assert GEN.with_results(page) == f"<!-- results: mad_gaussian -->\n```text\n{format_table(table).rstrip()}\n```\n<!-- /results -->\n"


def test_the_readme_quickstart_table_is_the_study_pages():
    readme = re.search(r"## The quickstart.*?```text\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    page = GEN.RESULTS.search((DOCS / "studies" / "quickstart.md").read_text()).group(2)
    assert readme == page


def test_the_study_file_reference_is_every_key_with_its_default():
    """The reference's blocks, put together for a kind, are that kind's default study: every key, each default."""
    sections = GEN.section_blocks()
    for kind, default in GEN.default_studies().items():
        text = "\n".join(sections[key] for key in type(default).model_fields)
        data = yaml.safe_load(text)
        assert set(data) == set(type(default).model_fields)
        if kind == "detect":
            data["detect"]["sources"] = default.detect.model_dump(mode="json")["sources"]
        if kind == "guide":  # a guide study samples at each of guide.scales: it refuses a guidance.scale of its own
            del data["guidance"]["scale"]
        assert parse_spec({**data, "kind": kind}).model_dump(mode="json") == default.model_dump(mode="json"), kind
    assert set(sections) == {k for cls in STUDY_KINDS.values() for k in cls.model_fields}


def _tracked(*folders: str) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", *folders], cwd=REPO, capture_output=True, text=True).stdout.split()
    return [REPO / p for p in listed if p.endswith(".py")]


def test_the_code_layout_names_every_module():
    layout = (DOCS / "reference" / "layout.md").read_text()
    missing = [str(p.relative_to(REPO)) for p in _tracked("synthdata", "loops")
               if p.name != "__init__.py" and not re.search(rf"\b{re.escape(p.name)}\b", layout)]
    assert not missing, missing


def test_every_mlflow_tag_the_code_writes_is_in_the_layout_reference():
    reference = (DOCS / "reference" / "mlflow.md").read_text()
    not_tags = {"synthdata.json", "synthdata.generators", "synthdata.classifiers", "synthdata.data", "mlflow.db"}
    tags = {m for p in _tracked("synthdata", "loops") for m in re.findall(r'"((?:synthdata|mlflow)\.[a-z_.]+)"', p.read_text())}
    missing = sorted(t for t in tags - not_tags if f"`{t}`" not in reference)
    assert len(tags) > 10 and not missing, missing


def test_the_cluster_config_installs_the_plugin_and_makes_the_data_root_the_guide_uses():
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    setup = " ".join(config["setup_commands"])
    assert "pip install -e /home/ubuntu/synthdata/examples/synthdata-vae" in setup
    root = re.search(r"root: (/home/ubuntu/\S+)#", (DOCS / "how-to" / "cluster.md").read_text()).group(1)
    assert f"mkdir -p {root}" in setup and f"CIFAR10('{root}'" in setup


def test_a_bare_name_that_no_study_has_is_one_line(capsys):
    from synthdata.cli import main

    assert main(["validate", "-q", "quickstrt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: quickstrt: no such study file") and "quickstart" in err and err.count("\n") == 1


def test_the_wheel_ships_the_studies_runnable_by_name_without_a_checkout(tmp_path):
    """`pip wheel .` then an install into a bare target: from a directory outside the repository, the shipped
    studies resolve by name and validate (the dependencies come from this environment: no torch install)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("synthdata", "loops"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)], check=True,
                   cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("synthdata-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True)
    away = tmp_path / "elsewhere"
    away.mkdir()
    check = ("import sys, synthdata, synthdata.studies as s\n"
             "from synthdata.cli import main\n"
             "assert synthdata.__file__.startswith(sys.argv[1]), synthdata.__file__\n"
             "assert 'quickstart' in s.names() and len(s.names()) >= 10\n"
             "assert all(main(['validate', '-q', n]) == 0 for n in ('quickstart', 'mad_gaussian', 'mix_digits', 'detect_digits'))\n"
             "print(len(s.names()))")
    done = subprocess.run([sys.executable, "-c", check, str(tmp_path / "site")], cwd=away, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == len(studies.names())
