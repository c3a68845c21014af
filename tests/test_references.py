"""Every reference in the repository resolves inside it.

Code and docs cite the project's own documents (`docs/<file>.md §N.M`: a numbered heading of that
file; a bare `§N.M` inside docs/<file>.md means that file), the paper's own numbering (`paper §4.1.3`,
`paper Eq. 5`, `paper Table 6`, `paper Fig. 3`: the lists in docs/method.md §1.3), or the authors'
files by name. Nothing may point at a document outside the repository: the specification and findings
files the project started from, or a folder beside the checkout.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("method", "design", "findings")  # the three the code cites; any docs/*.md is checked
SKIPPED_DIRS = {".git", ".venv", "venv", "runs", "build", "dist", "__pycache__", ".pytest_cache", ".benchmarks"}
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".txt", ".cfg", ".ini", ".yml", ".yaml"}
THIS_FILE = Path(__file__).resolve()  # it spells out the patterns it forbids

NUMBER = r"\d+(?:\.\d+)*"
SPAN = rf"{NUMBER}(?:\s*[-–]\s*{NUMBER})?"  # 4.4, or a range 2.1-2.3
# One reference group: `docs/method.md §4.4, §4.5 and §9.7`, `paper §4.1.3`.
GROUP = re.compile(rf"(?P<source>docs/[\w-]+\.md|[Pp]aper)`?\s+(?P<refs>§\s?{SPAN}(?:\s*(?:,|and|or)\s*§\s?{SPAN})*)")
ONE_REF = re.compile(rf"§\s?(?P<span>{SPAN})")
HEADING = re.compile(rf"^#{{2,6}}\s+(?P<number>{NUMBER})\.?\s+\S", re.MULTILINE)
EQUATION = re.compile(r"\bEqs?\.\s*(?P<first>\d+)(?:\s*[-–]\s*(?P<last>\d+))?")
PAPER_ITEM = re.compile(r"\b[Pp]aper\s+(?P<kind>Tables?|Fig\.|Figures?)\s*(?P<first>\d+)(?:\s*[-–]\s*(?P<last>\d+))?")
# A file of the repository named by its path from the root: docs/design.md, codaar/train/loop.py, ...
REPO_PATH = re.compile(r"(?<![\w./-])(?:README\.md|(?:docs|tests|profiles|kernels|codaar|bench)/[\w./-]*"
                       r"\.(?:md|py|sh|json|toml))\b")
PAPER_LISTS = {"Sections": "sections", "Equations": "equations", "Tables": "tables", "Figures": "figures"}

# Pointers to documents that are not in the repository.
OUTSIDE = [
    (re.compile(r"\.\./shared|/work/shared|\bshared/(?:spec|golden)\b"), "points to a folder outside the repository"),
    (re.compile(r"(?<![\w-])spec/"), "points to the specification folder outside the repository"),
    (re.compile(r"\bMETHOD(?:\.md)?\b"), "points to the specification outside the repository (cite docs/method.md)"),
    (re.compile(r"\bFINDINGS(?:\.md)?\b"), "points to the findings outside the repository (cite docs/findings.md)"),
    (re.compile(r"\bARCHITECTURE(?:\.md)?\b"), "points to a note outside the repository (cite docs/design.md)"),
    (re.compile(r"STYLE[-_]ANCHORS"), "points to a style study outside the repository"),
    (re.compile(r"\bspec(?:ification)?(?:'s)?\s*§|\bthe spec\b|\bspec\s+(?:FINDINGS|METHOD)", re.IGNORECASE),
     "points to the specification outside the repository (cite docs/method.md)"),
    (re.compile(r"\bpeers/"), "points to a script outside the repository"),
    (re.compile(r"\bSec\.\s*\d"), "is the paper's numbering: write `paper §N`"),
]


# ----------------------------------------------------------------------------- what exists
def repo_files() -> list[Path]:
    """The repository's text files, outside virtual environments, git and run folders."""
    found = []
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
            continue
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or parts[0] == ".ci") and path.resolve() != THIS_FILE:
            found.append(path)
    return found


def doc_sections() -> dict[str, set[str]]:
    """{"docs/method.md": {"1", "1.1", ...}, ...}: the numbered headings of each docs file."""
    return {f"docs/{path.name}": {m["number"] for m in HEADING.finditer(path.read_text())}
            for path in sorted((ROOT / "docs").glob("*.md"))}


def paper_numbering() -> dict[str, set[str]]:
    """The paper's sections, equations, tables and figures, as docs/method.md §1.3 lists them."""
    numbering = {key: set() for key in PAPER_LISTS.values()}
    path = ROOT / "docs" / "method.md"
    if path.exists():
        for line in path.read_text().splitlines():
            label, _, values = line.removeprefix("- ").partition(":")
            if label in PAPER_LISTS and values.strip():
                numbering[PAPER_LISTS[label]] = {v.strip() for v in values.split(",")}
    return numbering


# ----------------------------------------------------------------------------- the checks
def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _endpoints(span: str) -> list[str]:
    return [part.strip() for part in re.split(r"[-–]", span)]


def section_problems(text: str, name: str, sections: dict[str, set[str]], paper: dict[str, set[str]]) -> list[str]:
    """Every § of `text` (the file `name`, relative to the root) must name an existing section."""
    problems, covered = [], set()

    def check(source: str, span: str, offset: int) -> None:
        known = paper["sections"] if source.lower() == "paper" else sections.get(source)
        if known is None:
            problems.append(f"{name}:{_line(text, offset)}: §{span} cites {source}, which does not exist")
            return
        for number in _endpoints(span):
            if number not in known:
                problems.append(f"{name}:{_line(text, offset)}: {source} has no section {number} (§{span})")

    for group in GROUP.finditer(text):
        covered.update(range(group.start(), group.end()))
        for ref in ONE_REF.finditer(group["refs"]):
            check(group["source"], ref["span"], group.start("refs") + ref.start())
    own = name if name in sections else None  # a bare § inside docs/<file>.md: that file
    for ref in ONE_REF.finditer(text):
        if ref.start() in covered:
            continue
        if own is None:
            problems.append(f"{name}:{_line(text, ref.start())}: §{ref['span']} names no document "
                            "(write `docs/<file>.md §N` or `paper §N`)")
        else:
            check(own, ref["span"], ref.start())
    stray = [i for i, char in enumerate(text) if char == "§" and i not in covered
             and not ONE_REF.match(text, i)]
    problems += [f"{name}:{_line(text, i)}: a § without a section number" for i in stray]
    return problems


def paper_item_problems(text: str, name: str, paper: dict[str, set[str]]) -> list[str]:
    """Equations (`Eq. 5`, `Eq. 6-7`: always the paper's) and `paper Table/Fig. N` must exist."""
    problems = []
    items = [(m, "equations") for m in EQUATION.finditer(text)]
    items += [(m, "tables" if m["kind"].startswith("Table") else "figures") for m in PAPER_ITEM.finditer(text)]
    for match, kind in items:
        for number in filter(None, (match["first"], match["last"])):
            if number not in paper[kind]:
                problems.append(f"{name}:{_line(text, match.start())}: the paper has no {kind[:-1]} {number} "
                                f"({match.group(0)!r})")
    return problems


def outside_problems(text: str, name: str) -> list[str]:
    return [f"{name}:{_line(text, m.start())}: {m.group(0)!r} {why}"
            for pattern, why in OUTSIDE for m in pattern.finditer(text)]


def path_problems(text: str, name: str) -> list[str]:
    """Files named by their path from the root (docs/*.md, code, profiles) must exist."""
    cited = {m.group(0) for m in REPO_PATH.finditer(text)}
    return [f"{name}: cites {path}, which is not in the repository" for path in sorted(cited)
            if not (ROOT / path).exists()]


def all_problems(kind: str) -> list[str]:
    sections, paper = doc_sections(), paper_numbering()
    problems = []
    for path in repo_files():
        name = path.relative_to(ROOT).as_posix()
        text = path.read_text(errors="replace")
        if kind == "sections":
            problems += section_problems(text, name, sections, paper)
        elif kind == "paper":
            problems += paper_item_problems(text, name, paper)
        elif kind == "outside":
            problems += outside_problems(text, name)
        else:
            problems += path_problems(text, name)
    return problems


def _report(problems: list[str]) -> str:
    shown = "\n".join(problems[:60])
    more = f"\n... and {len(problems) - 60} more" if len(problems) > 60 else ""
    return f"{len(problems)} reference(s) that do not resolve:\n{shown}{more}"


# ----------------------------------------------------------------------------- the tests
def test_docs_have_numbered_sections_and_the_paper_list():
    sections = doc_sections()
    assert {f"docs/{name}.md" for name in DOCS} <= set(sections), "docs/method.md, design.md, findings.md"
    for doc, numbers in sections.items():
        text = (ROOT / doc).read_text()
        headings = [m["number"] for m in HEADING.finditer(text)]
        assert len(headings) == len(set(headings)), f"{doc}: a section number is used twice"
        orphans = [n for n in headings if "." in n and n.rsplit(".", 1)[0] not in numbers]
        assert not orphans, f"{doc}: subsections without their section: {orphans}"
    paper = paper_numbering()
    assert {"4.1.3", "5.4"} <= paper["sections"] and {"1", "10"} <= paper["equations"], paper
    assert {"7"} <= paper["tables"] and paper["figures"], paper


@pytest.mark.parametrize("kind", ["sections", "paper", "outside", "paths"])
def test_every_reference_resolves(kind: str):
    """sections: every § names an existing section; paper: every equation, table and figure of the
    paper exists; outside: nothing points outside the repository; paths: every file named exists."""
    problems = all_problems(kind)
    assert not problems, _report(problems)


def test_the_checks_catch_what_they_must():
    """The checker on hand-made lines: each bad reference is found, each good one passes."""
    sections = {"docs/method.md": {"4", "4.4", "4.5", "9", "9.7"}, "docs/design.md": {"1", "1.2"}}
    paper = {"sections": {"4.1.3"}, "equations": {"5", "6", "7"}, "tables": {"6"}, "figures": {"3"}}

    def sections_of(line: str, name: str = "x.py") -> list[str]:
        return section_problems(line, name, sections, paper)

    good = ("# see docs/method.md §4.4, §4.5 and §9.7; `docs/design.md §1.2`; paper §4.1.3",
            "(docs/method.md §4.4-4.5)", "`docs/method.md` §9")
    for line in good:
        assert sections_of(line) == [], line
    assert sections_of("as §4.4 says", "docs/method.md") == []  # a bare § inside a doc: that doc
    for line in ("# spec §8.9", "(§4)", "docs/method.md §99", "docs/nowhere.md §1", "paper §4.3",
                 "docs/method.md §4.4, §8", "docs/method.md §4.4-4.9", "a lone §"):
        assert sections_of(line), line
    assert sections_of("§12", "docs/design.md")

    assert paper_item_problems("paper Eq. 5, Eq. 6-7, paper Table 6, paper Fig. 3", "x.py", paper) == []
    for line in ("Eq. 11", "Eq. 6-8", "paper Table 8", "paper Fig. 9"):
        assert paper_item_problems(line, "x.py", paper), line

    for line in ("spec §8.9", "METHOD §6", "FINDINGS 1", "../shared/spec/METHOD.md", "the spec says",
                 "STYLE-ANCHORS.md", "ARCHITECTURE.md", "peers/make_golden.py", "Sec. 4.2"):
        assert outside_problems(line, "x.py"), line
    for line in ('spec["arch"]', "for gpu, spec in GPUS.items()", "the specialisation of a launch",
                 "docs/findings.md §1"):
        assert outside_problems(line, "x.py") == [], line

    for line in ("see docs/nowhere.md", "tests/golden/MISSING.md", "(codaar/graph_step.py)", "`kernels/gone.py::f`"):
        assert path_problems(line, "x.py"), line
    good_paths = "see README.md, profiles/README.md, `codaar/quantizer.py::CrossModalQuantizer`, kernels/<op>.py"
    assert path_problems(good_paths, "x.py") == []
