"""Every citation in the repository resolves inside the repository (docs/math.md, issue 8).

The checker scans every tracked (or new, not ignored) text file and reports

(a) an identity ``I<n>`` (``(I5)``, ``I5/I6``, ranges ``I1-I14`` meaning all of them) that has no
    heading ``### I<n> - ...`` in docs/math.md;
(b) ``docs/math.md section N`` (also ``sections 2, 4 and 5``, ``section 1-2``) for a section
    ``## N. ...`` that docs/math.md does not have;
(c) a repository path (``docs/<x>.md``, ``experiments/<x>.py``, ``densityformula/<x>.py``,
    ``notebooks/<x>.ipynb``, ``tests/<x>.py``, ``benchmarks/<x>.py``) that does not exist, unless
    it is named as a past path ("was ``x.py``", "formerly", "renamed from", "moved from");
(d) a mention of a file outside the repository: the design notes that lived beside it, or an
    absolute path of the build machine.

In Python files only comments and string literals are read, so a variable named like an
identity (``I2 = torch.eye(2)``) is not a citation.  The forbidden names below are assembled
from pieces so that this file does not mention them itself.
"""
from __future__ import annotations

import io
import json
import re
import subprocess
import tokenize
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, FrozenSet, Iterable, Iterator, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
MATH = ROOT / "docs" / "math.md"

TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".cfg", ".toml", ".txt", ".yml", ".yaml", ".sh", ".ini"}
TEXT_NAMES = {"Makefile", "LICENSE", "run"}
SKIP_DIRS = {".venv", "venv", "results", ".git", "build", "dist", "__pycache__", ".pytest_cache",
             ".hypothesis", ".ipynb_checkpoints", "checkpoints", ".mypy_cache", ".ruff_cache"}

# -- patterns ------------------------------------------------------------------------------------
_ID_RANGE = re.compile(r"\bI(\d{1,2})\s*(?:-|\u2013|\u2014|\.\.)\s*I?(\d{1,2})\b")
_ID = re.compile(r"\bI(\d{1,2})\b")
_NUMS = r"(\d{1,2}(?:\s*(?:,|and|or|-|\u2013)\s*\d{1,2})*)"
_SECTION = re.compile(r"docs/math\.md,?\s+(?:sections?|\u00a7)\s*" + _NUMS)
_SECTION_OF = re.compile(r"\bsections?\s+" + _NUMS + r"\s+of\s+docs/math\.md")
_SECTION_LOCAL = re.compile(r"\bsections?\s+" + _NUMS + r"\b")
_PATH = re.compile(
    r"(?<![\w.-])((?:docs|experiments|densityformula|notebooks|tests|benchmarks)/[\w./-]*?"
    r"\.(?:md|py|ipynb))(?![\w/])"
)
_OUTSIDE = [
    re.compile(re.escape("..") + "/" + "shared"),
    re.compile(r"(?<!\w)" + "MATH" + r"\.md"),
    re.compile(r"(?<!\w)" + "DESIGN" + r"\.md"),
    re.compile(r"(?<![\w.])/" + "work" + r"/"),
]
_HISTORY = re.compile(r"\b(?:was|formerly|renamed from|moved from)\s*[`'\"]*$")
_HEAD_ID = re.compile(r"^###\s+I(\d{1,2})\s+-\s+\S", re.M)
_HEAD_SECTION = re.compile(r"^##\s+(\d{1,2})\.\s+\S", re.M)


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    kind: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}: {self.text}"


# -- the files -----------------------------------------------------------------------------------
def _is_text(rel: str) -> bool:
    parts = Path(rel).parts
    if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in parts[:-1]):
        return False
    name = parts[-1]
    return Path(name).suffix in TEXT_SUFFIXES or name in TEXT_NAMES


def repository_files(root: Path = ROOT) -> List[str]:
    """Tracked files plus new, not ignored ones (relative paths); a directory walk without git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=root, capture_output=True, check=True, timeout=30,
        ).stdout.decode()
        rels = [r for r in out.split("\0") if r]
    except (OSError, subprocess.SubprocessError):
        rels = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    return sorted({r for r in rels if _is_text(r) and (root / r).is_file()})


def _python_text(source: str) -> Iterator[Tuple[int, str]]:
    """``(line, text)`` of the comments and string literals of a Python source."""
    kinds = {tokenize.STRING, tokenize.COMMENT}
    middle = getattr(tokenize, "FSTRING_MIDDLE", None)
    if middle is not None:
        kinds.add(middle)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in kinds:
                for i, line in enumerate(tok.string.split("\n")):
                    yield tok.start[0] + i, line
    except (tokenize.TokenError, SyntaxError, IndentationError):
        yield from enumerate(source.split("\n"), 1)


def _notebook_text(source: str) -> Iterator[Tuple[int, str]]:
    """``(line, text)`` of a notebook's JSON lines, string values decoded (so ``\\n`` is a newline)."""
    for n, raw in enumerate(source.split("\n"), 1):
        s = raw.strip().rstrip(",")
        if s.startswith('"') and s.endswith('"'):
            try:
                value = json.loads(s)
            except ValueError:
                value = raw
            yield n, value if isinstance(value, str) else raw
        else:
            m = re.match(r'^"[^"]*":\s*(".*")$', s)
            if m:
                try:
                    yield n, json.loads(m.group(1))
                    continue
                except ValueError:
                    pass
            yield n, raw


def text_lines(rel: str, source: str) -> Iterator[Tuple[int, str]]:
    """The lines of ``source`` that the checks read, with their line numbers."""
    if rel.endswith(".py"):
        return _python_text(source)
    if rel.endswith(".ipynb"):
        return _notebook_text(source)
    return enumerate(source.split("\n"), 1)


# -- what docs/math.md defines -------------------------------------------------------------------
def math_identities(text: str) -> FrozenSet[int]:
    return frozenset(int(m) for m in _HEAD_ID.findall(text))


def math_sections(text: str) -> FrozenSet[int]:
    return frozenset(int(m) for m in _HEAD_SECTION.findall(text))


@lru_cache(maxsize=1)
def _math() -> Tuple[FrozenSet[int], FrozenSet[int]]:
    text = MATH.read_text(encoding="utf-8")
    return math_identities(text), math_sections(text)


# -- the checks, one line at a time --------------------------------------------------------------
def _numbers(spec: str) -> List[int]:
    """``"2, 4 and 5"`` -> [2, 4, 5]; ``"1-2"`` -> [1, 2]."""
    out: List[int] = []
    for part in re.split(r"\s*(?:,|and|or)\s*", spec):
        m = re.fullmatch(r"(\d+)\s*[-\u2013]\s*(\d+)", part.strip())
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            out.extend(range(min(a, b), max(a, b) + 1))
        elif part.strip().isdigit():
            out.append(int(part))
    return out


def cited_identities(line: str) -> Set[int]:
    """Identity numbers a line cites; a range ``I1-I14`` cites every number in it."""
    found: Set[int] = set()
    for m in _ID_RANGE.finditer(line):
        a, b = int(m.group(1)), int(m.group(2))
        if a < b:
            found.update(range(a, b + 1))
        else:
            found.update((a, b))
    found.update(int(m) for m in _ID.findall(line))
    return found


def cited_sections(line: str, local: bool = False) -> Set[int]:
    """Section numbers of docs/math.md a line cites (``local``: plain ``section N``, inside it)."""
    found: Set[int] = set()
    pats = [_SECTION, _SECTION_OF] + ([_SECTION_LOCAL] if local else [])
    for pat in pats:
        for m in pat.finditer(line):
            found.update(_numbers(m.group(1)))
    return found


def check_text(
    rel: str,
    lines: Iterable[Tuple[int, str]],
    identities: FrozenSet[int],
    sections: FrozenSet[int],
    exists: Callable[[str], bool],
) -> List[Problem]:
    """Every problem (a)-(d) of the module docstring in one file's lines."""
    problems: List[Problem] = []
    local = rel == "docs/math.md"
    for n, line in lines:
        for i in sorted(cited_identities(line) - identities):
            problems.append(Problem(rel, n, "identity without a heading in docs/math.md", f"I{i}"))
        for s in sorted(cited_sections(line, local) - sections):
            problems.append(Problem(rel, n, "docs/math.md has no such section", f"section {s}"))
        for m in _PATH.finditer(line):
            if _HISTORY.search(line[: m.start()]):
                continue  # "this module was `x.py`": a past name, said to be one
            if not exists(m.group(1)):
                problems.append(Problem(rel, n, "no such file in the repository", m.group(1)))
        for pat in _OUTSIDE:
            hit = pat.search(line)
            if hit:
                problems.append(Problem(rel, n, "mentions a file outside the repository", hit.group(0)))
    return problems


def _exists(path: str) -> bool:
    return (ROOT / path).exists()


def check_repository(files: Optional[List[str]] = None) -> List[Problem]:
    identities, sections = _math()
    problems: List[Problem] = []
    for rel in repository_files() if files is None else files:
        try:
            source = (ROOT / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        problems.extend(check_text(rel, text_lines(rel, source), identities, sections, _exists))
    return problems


# -- tests ---------------------------------------------------------------------------------------
def test_math_note_numbers_its_identities_and_sections() -> None:
    """docs/math.md has sections 1-10 and identities I1-I24, each heading once, in order."""
    text = MATH.read_text(encoding="utf-8")
    ids = [int(m) for m in _HEAD_ID.findall(text)]
    secs = [int(m) for m in _HEAD_SECTION.findall(text)]
    assert ids == list(range(1, max(ids) + 1)) and max(ids) >= 24, ids
    assert secs == list(range(1, max(secs) + 1)) and max(secs) >= 10, secs


def test_every_citation_resolves_inside_the_repository() -> None:
    problems = check_repository()
    assert not problems, "\n".join(str(p) for p in problems)


def test_the_tests_the_math_note_names_exist() -> None:
    """Each ``tests/<file>.py::<test>`` of docs/math.md's table names a test function that exists."""
    text = MATH.read_text(encoding="utf-8")
    missing = []
    for path, name in set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", text)):
        f = ROOT / path
        if not f.is_file() or not re.search(rf"^\s*def {name}\(", f.read_text(encoding="utf-8"), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, missing


def test_negative_controls_are_reported() -> None:
    """The checker finds a missing identity, section, file and an outside path in made-up text."""
    fake_id = "I" + "99"
    fake_section = "docs/" + "math.md section " + "42"
    fake_doc = "docs/" + "nonexistent.md"
    outside = ".." + "/shared/x"
    text = f"as (I5) and ({fake_id}) say, see {fake_section} and {fake_doc}; cf. {outside}"
    found = check_text("fake.md", [(1, text)], frozenset(range(1, 25)), frozenset(range(1, 11)), _exists)
    kinds = {(p.kind, p.text) for p in found}
    assert ("identity without a heading in docs/math.md", fake_id) in kinds, found
    assert ("docs/math.md has no such section", "section 42") in kinds, found
    assert ("no such file in the repository", fake_doc) in kinds, found
    assert any(p.kind == "mentions a file outside the repository" for p in found), found
    assert len(found) == 4, found
    past = check_text("x.md", [(1, f"this module was ``{fake_doc}``")], frozenset(), frozenset(), _exists)
    assert past == [], past
    for name in ("MATH", "DESIGN"):
        hit = check_text("x.py", [(3, f"see {name}" + ".md")], frozenset(), frozenset(), _exists)
        assert [p.line for p in hit] == [3], hit


def test_identity_ranges_and_lists_are_expanded() -> None:
    assert cited_identities("(I1-I4)") == {1, 2, 3, 4}
    assert cited_identities("docs/math.md I5/I6, and I7") == {5, 6, 7}
    assert cited_identities("I1\u2013I14") == set(range(1, 15))
    assert cited_identities("(I7 / I8)") == {7, 8}
    assert cited_identities("no identity: I2C, MI5x, AI") == set()
    assert cited_sections("docs/math.md sections 2, 4 and 5") == {2, 4, 5}
    assert cited_sections("(docs/math.md section 1-2)") == {1, 2}
    assert cited_sections("see section 3 of docs/math.md") == {3}


def test_python_code_names_are_not_citations() -> None:
    """``I2 = torch.eye(2)`` in code is a variable; the same token in a docstring is a citation."""
    i = "I"  # the source below is assembled so that this file cites none of these numbers
    src = i + "99 = 1\nx = f(" + i + "98)\n\"\"\"cites (" + i + "97)\"\"\"\n# and " + i + "96\n"
    lines = list(_python_text(src))
    assert {i for _, t in lines for i in cited_identities(t)} == {96, 97}


def test_notebook_strings_are_decoded() -> None:
    nb = json.dumps({"cells": [{"cell_type": "markdown", "source": ["intro\n", "I8 and I9\n"]}]}, indent=1)
    got = {i for _, t in _notebook_text(nb) for i in cited_identities(t)}
    assert got == {8, 9}
