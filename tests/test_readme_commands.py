"""Every ``python -m MODULE ...`` command in README.md and docs/*.md names a module that exists
and only flags its command line has.

Commands are taken from the shell code blocks (```bash, ```sh or unlabelled; continuation lines
joined, comments dropped) and from inline code spans that start with ``python -m``. Per command:

* the module must be found (``importlib.util.find_spec``); ``python SCRIPT.py`` must exist;
* project modules with an argparse command line expose it as ``build_parser()``: every ``--flag``
  must be one of its options and the values must parse (types, choices); a missing required
  argument is allowed (inline spans often name a command without its arguments);
* the ml_collections command lines (``jaxhead.train``, ``jaxhead.evaluate``, ``jaxhead.compare``:
  modules that run ``jaxhead.config_cli.config_main``) take ``--config FILE`` and
  ``--config.a.b=value``: the file must exist (a file outside ``configs/``, e.g. the README's
  ``my_config.py`` example, is checked as ``configs/base.py``, which such a file extends, less
  ``objective_kw.*``, which its own registered objectives may add) and each dotted key must
  exist in its ``get_config()``.

Placeholders the docs use are tolerated: ``[--optional flags]`` (the brackets are dropped),
``a|b`` alternatives (the first is checked) and ``...``. Modules outside the project (pytest) are
only looked up.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("jaxhead", "convert_weights", "benchmarks", "configs")
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```([\w-]*)\s*$")
INLINE = re.compile(r"`(python3? -m [^`]+)`")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, body) of the shell code blocks of a markdown text."""
    out, lang, start, body = [], None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.strip())
        if lang is None and m:
            lang, start, body = m.group(1).lower(), i + 1, []
        elif lang is not None and line.strip() == "```":
            if lang in SHELL_LANGS:
                out.append((start, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return out


def _python_commands(tokens: list[str]) -> list[list[str]]:
    """The ``python ...`` invocations in a token list (``python -m M args`` or ``python F.py``),
    each cut at a shell operator; quoted strings holding a command (``--command "... python -m
    ..."``) are searched too."""
    cmds = []
    for i, t in enumerate(tokens):
        if " " in t and "python" in t:
            cmds += commands_in(t)
        if t in ("python", "python3") and i + 1 < len(tokens):
            cmd = ["python"]
            for u in tokens[i + 1:]:
                if u in ("&&", "||", ";", "|", ">", ">>", "2>", "&"):
                    break
                cmd.append(u)
            cmds.append(cmd)
    return cmds


def commands_in(shell: str) -> list[list[str]]:
    """Every python command of a shell snippet (line continuations joined, comments dropped)."""
    shell = shell.replace("\\\n", " ")
    out = []
    for line in shell.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lex.whitespace_split, lex.commenters = True, "#"
        try:
            tokens = list(lex)
        except ValueError:  # an unbalanced quote: check what can be read
            tokens = line.split("#")[0].split()
        out += _python_commands(tokens)
    return out


def doc_commands() -> list[tuple[str, list[str]]]:
    """(where, command tokens) of every python command in the README and the docs pages."""
    found = []
    for path in doc_files():
        text = path.read_text()
        rel = path.relative_to(ROOT)
        for start, body in shell_blocks(text):
            found += [(f"{rel} (block at line {start})", c) for c in commands_in(body)]
        for m in INLINE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found += [(f"{rel}:{line}", c) for c in commands_in(" ".join(m.group(1).split()))]
    return found


def _clean(args: list[str]) -> list[str]:
    """Drop the docs' placeholders: brackets of optional parts, ``...``, ``a|b`` alternatives."""
    out = []
    for a in args:
        if a in ("...", "[", "]"):
            continue
        a = a.lstrip("[").rstrip("]") if not a.startswith("<") else a
        if "|" in a and not a.startswith("<"):
            a = a.split("|")[0]
        if a:
            out.append(a)
    return out


def _config_keys_missing(config_path: str, keys: list[str]) -> list[str]:
    import ml_collections

    spec = importlib.util.spec_from_file_location("_doc_config", ROOT / config_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    missing = []
    for key in keys:
        node = cfg
        for part in key.split("."):
            if isinstance(node, ml_collections.ConfigDict) and part in node:
                node = node[part]
            else:
                missing.append(key)
                break
    return missing


def _check_config_cli(module: str, args: list[str]) -> list[str]:
    errors, config, keys = [], None, []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--config" and i + 1 < len(args):
            config, i = args[i + 1], i + 2
            continue
        if a.startswith("--config="):
            config = a.split("=", 1)[1]
        elif a.startswith("--config."):
            keys.append(a[len("--config."):].split("=", 1)[0])
        elif a.startswith("-"):
            errors.append(f"{module} takes --config FILE and --config.KEY=VALUE only, not {a}")
        i += 1
    if config is None:
        if keys and module != "jaxhead.train":
            errors.append(f"{module} needs --config FILE for its --config.* overrides")
        config = "configs/demo.py"  # jaxhead.train's default
    if config.startswith("configs/") and not (ROOT / config).is_file():
        return errors + [f"config file {config} does not exist"]
    if not config.startswith("configs/"):
        # an example file of the user's, built on the base config; it may register objectives,
        # whose keywords become objective_kw fields
        config = "configs/base.py"
        keys = [k for k in keys if not k.startswith("objective_kw.")]
    errors += [f"{config} has no field {k!r}" for k in _config_keys_missing(config, keys)]
    return errors


def _check_argparse(module: str, mod, args: list[str]) -> list[str]:
    if not hasattr(mod, "build_parser"):
        return [f"{module} has no build_parser() to check its flags against"]
    ap: argparse.ArgumentParser = mod.build_parser()
    errors = [f"{module} has no option {a.split('=')[0]}" for a in args
              if a.startswith("-") and not re.match(r"^-\d", a)
              and a.split("=")[0] not in ap._option_string_actions]
    if errors:
        return errors
    try:
        ap.parse_args(args)
    except SystemExit:
        return [f"{module}: its parser refused {' '.join(args)}"]
    except Exception as e:  # jaxhead.errors.ArgumentParser raises UsageError
        if "required" not in str(e):
            return [f"{module}: {e}"]
    return []


def check_command(cmd: list[str]) -> list[str]:
    """Errors of one ``python ...`` command (empty: fine)."""
    if len(cmd) < 2:
        return []
    if cmd[1] != "-m":
        script = cmd[1]
        if script.endswith(".py") and not (ROOT / script).is_file():
            return [f"script {script} does not exist"]
        return []
    if len(cmd) < 3:
        return ["python -m without a module"]
    module, args = cmd[2], _clean(cmd[3:])
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return [f"module {module} does not exist"]
    if module.split(".")[0] not in PROJECT:
        return []
    mod = importlib.import_module(module)
    source = Path(mod.__file__).read_text()
    if "config_main(" in source or "parse_config(" in source:
        return _check_config_cli(module, args)
    return _check_argparse(module, mod, args)


# --- the docs ---------------------------------------------------------------------------------

COMMANDS = doc_commands()


def test_the_docs_have_commands():
    modules = {c[2] for _, c in COMMANDS if len(c) > 2 and c[1] == "-m"}
    assert {"jaxhead.train", "jaxhead.render", "jaxhead.invert", "jaxhead.evaluate",
            "convert_weights.panohead", "pytest"} <= modules


def test_every_documented_command_matches_its_cli(monkeypatch):
    monkeypatch.chdir(ROOT)
    problems = []
    for where, cmd in COMMANDS:
        problems += [f"{where}: {' '.join(cmd)}\n    {e}" for e in check_command(cmd)]
    assert not problems, "\n".join(problems)


def test_readme_test_command_is_the_ci_one():
    command = 'pip install -e ".[test]" && python -m pytest -q'
    assert command in (ROOT / "README.md").read_text()
    assert command in (ROOT / ".ci" / "run").read_text()


def test_docs_links_resolve():
    """Relative links between the README and the docs pages point at files that exist."""
    bad = []
    for path in doc_files():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                bad.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not bad, bad


# --- the checker itself -----------------------------------------------------------------------

@pytest.mark.parametrize("command, complaint", [
    ("python -m jaxhead.render --out o --no-such-flag 3", "no option --no-such-flag"),
    ("python -m jaxhead.no_such_module --x 1", "does not exist"),
    ("python -m convert_weights.lpips out --net resnet", "invalid choice"),
    ("python -m jaxhead.train --config configs/demo.py --config.no_such_field=1", "no field"),
    ("python -m jaxhead.train --config configs/demo.py --config.single.no_such=1", "no field"),
    ("python -m jaxhead.evaluate --config configs/no_such.py", "does not exist"),
    ("python -m jaxhead.compare --config configs/compare.py --steps 3", "not --steps"),
    ("python docs/no_such_script.py", "does not exist"),
])
def test_checker_refuses_a_made_up_command(monkeypatch, command, complaint):
    monkeypatch.chdir(ROOT)
    (cmd,) = commands_in(command)
    errors = check_command(cmd)
    assert errors and complaint in errors[0], errors


def test_checker_reads_blocks_continuations_and_placeholders(monkeypatch):
    monkeypatch.chdir(ROOT)
    text = ("intro `python -m jaxhead.render --seeds\n0,1,2 --out out/demo`\n\n```bash\n"
            "# a comment: python -m jaxhead.no_such\n"
            "pip install -e . && python -m jaxhead.train --config configs/pixar.py \\\n"
            "    --config.grid.mode=after_sr   # trailing comment\n"
            "python -m jaxhead.invert --generator g --images i --out o [--pti-steps 350]\n"
            "```\n\n```python\nimport os  # python -m not_a_command\n```\n")
    cmds = [c for _, b in shell_blocks(text) for c in commands_in(b)]
    cmds += [c for m in INLINE.finditer(text) for c in commands_in(" ".join(m.group(1).split()))]
    assert [c[2] for c in cmds] == ["jaxhead.train", "jaxhead.invert", "jaxhead.render"]
    assert cmds[0][-1] == "--config.grid.mode=after_sr"
    assert all(check_command(c) == [] for c in cmds)


def test_layout_names_every_module():
    """docs/layout.md has one line per module of the package, configs, converters, benchmarks."""
    text = (ROOT / "docs" / "layout.md").read_text()
    listed = set(re.findall(r"^- `([\w/]+\.py)`", text, flags=re.M))
    modules = {str(p.relative_to(ROOT)) for d in ("jaxhead", "convert_weights", "configs",
                                                  "benchmarks") for p in (ROOT / d).rglob("*.py")}
    assert not modules - listed, f"missing from docs/layout.md: {sorted(modules - listed)}"
    assert not listed - modules, f"docs/layout.md lists modules that do not exist: "\
                                 f"{sorted(listed - modules)}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def test_docs_anchors_resolve():
    """``page.md#anchor`` and ``#anchor`` links name a heading of that page."""
    def anchors(path: Path) -> set[str]:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}

    bad = []
    for path in doc_files():
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", path.read_text()):
            page = path if not target else path.parent / target
            if page.suffix == ".md" and page.exists() and anchor not in anchors(page):
                bad.append(f"{path.relative_to(ROOT)} -> {target}#{anchor}")
    assert not bad, bad
