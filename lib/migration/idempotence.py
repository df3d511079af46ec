# SPDX-License-Identifier: MIT
"""The lint's idempotence check: shell patterns that change or fail on a second run.

A migration runs again after a power cut or a kill interrupted it, and a failed one on every
boot until it succeeds, so each step must be safe to repeat. This is static help for the common
mistakes, not a proof; a line-based scanner that knows comments, quotes, line continuations,
here-documents and the shell's compound commands well enough to find

- ``>>`` to a file: appends again on every run;
- ``useradd``, ``groupadd``, ``adduser``, ``addgroup``: fail when the user or group exists
  (``groupadd -f`` does not);
- ``mv``: fails when its source is gone, moved by the run that was interrupted (``-f`` only
  stops prompts: it does not help);
- ``mkdir`` without ``-p``: fails when the directory exists;
- ``ln`` without ``-f``: fails when the link exists; ``ln -sf`` without ``-n``: when the link
  already points to a directory, a second run creates a link inside that directory.

A command counts as guarded, and is not reported, when it is inside an ``if`` (condition or any
branch) or a ``case``, or when ``&&``/``||`` comes before it in its list
(``grep -q x f || echo x >>f``, ``[ -d d ] || { mkdir d; }``). A command that fails on a second
run also counts as guarded when ``||`` follows it with anything but ``exit``, ``return`` or
``false`` (``useradd foo || true``). The scanner does not judge what a condition tests: a
guard that tests the wrong thing passes. Commands in ``$(...)``, backquotes and ``eval`` strings
are not looked at; commands run through wrappers other than ``command``, ``busybox`` and
variable assignments (``sudo``, ``xargs``, ``find -exec``) neither.

False positives, such as an append to a log file that is meant to grow or a ``mkdir`` of a
directory that a previous step just removed, are silenced per line with a trailing comment
``# migration: idempotent`` (on the last line of a command continued over several lines).
"""

import bisect
import re
from typing import List, NamedTuple, Optional, Sequence, Set, Tuple

from . import lint

CHECK = "idempotence"
MARKER = re.compile(r"\bmigration:\s*idempotent\b")
"""The comment text that silences the findings of its line."""

_OPERATORS = sorted(
    ("<<<", "<<-", "&>>", ";;&", "&&", "||", ";;", ">>", "<<", ">&", "<&", "<>", ">|", "&>",
     "|&", ";&", ";", "&", "|", "(", ")", "<", ">"),
    key=len,
    reverse=True,
)  # fmt: skip
_REDIRECTIONS = frozenset(("<<<", "<<-", "&>>", ">>", "<<", ">&", "<&", "<>", ">|", "&>", "<", ">"))
_APPENDS = frozenset((">>", "&>>"))
_TRUNCATES = frozenset((">", ">|", "&>"))
_HEREDOCS = frozenset(("<<", "<<-"))
_LIST_ENDS = frozenset((";", "&", ";;", ";;&", ";&", "\n"))
_WORD_END = frozenset(" \t\n;&|()<>")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_WRAPPERS = frozenset(("command", "busybox"))
_NO_HANDLER = frozenset(("exit", "return", "false"))
_SAFE_TARGET = re.compile(r"^(/dev/|\$\{?TMPDIR\b)")
_SILENCE_HINT = " (if it is safe here, end the line with `# migration: idempotent`)"


class Token(NamedTuple):
    kind: str
    """"word", "op" or "newline"."""
    text: str
    """The word as written (quotes included), or the operator."""
    line: int
    adjacent: bool
    """No blank between this token and the one before (``2>>``)."""

    @property
    def value(self) -> str:
        """The word without its quote characters (good enough for options and paths)."""
        return self.text.replace('"', "").replace("'", "")


class Command(NamedTuple):
    """One simple command, with what guards it."""

    words: List[Token]
    """The command name first (after assignments and wrappers), then its arguments."""
    appends: List[Tuple[str, int]]
    """(target, line) of each ``>>``."""
    writes: List[str]
    """Targets of ``>`` (truncating) redirections, and ``$VAR`` of ``VAR=$(mktemp ...)``."""
    lines: Tuple[int, int]
    """First and last line it spans."""
    in_guard: bool
    """Inside if/case, or after && / || in its list."""
    handled: bool
    """Followed by || (with a handler that does not fail)."""


def _skip_quoted(s: str, i: int) -> int:
    """Index after the quoted string, substitution or parameter expansion starting at ``i``."""
    n = len(s)
    c = s[i]
    if c == "'":
        end = s.find("'", i + 1)
        return n if end < 0 else end + 1
    if c in '"`':
        i += 1
        while i < n and s[i] != c:
            if s[i] == "\\":
                i += 2
            elif c == '"' and s.startswith(("$(", "${"), i):
                i = _skip_quoted(s, i)
            else:
                i += 1
        return min(i + 1, n)
    # $( ... ) or ${ ... }: to the matching bracket, skipping what is quoted inside.
    close = ")" if s[i + 1] == "(" else "}"
    openc = s[i + 1]
    depth = 0
    i += 1
    while i < n:
        ch = s[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "'\"`" or s.startswith(("$(", "${"), i):
            i = _skip_quoted(s, i)
            continue
        if ch == openc:
            depth += 1
        elif ch == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def tokenize(text: str) -> Tuple[List[Token], Set[int]]:
    """The tokens of a script and the lines whose comment holds :data:`MARKER`.

    Here-document bodies are skipped; a backslash-newline joins lines (the tokens keep the line
    they start on); comments are dropped.
    """
    tokens: List[Token] = []
    silenced: Set[int] = set()
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    line_of = _LineIndex(starts)
    heredocs: List[Tuple[str, bool]] = []
    want_delimiter: Optional[bool] = None  # the strip flag of a << waiting for its delimiter
    i, n = 0, len(text)
    adjacent = False
    while i < n:
        c = text[i]
        if text.startswith("\\\n", i):
            i += 2
            adjacent = False
            continue
        if c in " \t\r":
            i += 1
            adjacent = False
            continue
        line = line_of(i)
        if c == "\n":
            tokens.append(Token("newline", "\n", line, adjacent))
            i += 1
            for delimiter, strip in heredocs:
                i = _skip_heredoc(text, i, delimiter, strip)
            heredocs = []
            adjacent = False
            continue
        if c == "#":
            end = text.find("\n", i)
            end = n if end < 0 else end
            if MARKER.search(text, i, end):
                silenced.add(line)
            i = end
            continue
        op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
        if op:
            tokens.append(Token("op", op, line, adjacent))
            if op in _HEREDOCS:
                want_delimiter = op == "<<-"
            i += len(op)
            adjacent = True
            continue
        start = i
        while i < n and text[i] not in _WORD_END:
            if text.startswith("\\\n", i):
                break
            if text[i] == "\\":
                i += 2
            elif text[i] in "'\"`" or text.startswith(("$(", "${"), i):
                i = _skip_quoted(text, i)
            else:
                i += 1
        word = Token("word", text[start:i], line, adjacent)
        tokens.append(word)
        if want_delimiter is not None:
            heredocs.append((word.value.replace("\\", ""), want_delimiter))
            want_delimiter = None
        adjacent = True
    return tokens, silenced


class _LineIndex:
    """Line number (1-based) of an index into the text."""

    def __init__(self, starts: Sequence[int]) -> None:
        self.starts = starts

    def __call__(self, pos: int) -> int:
        return bisect.bisect_right(self.starts, pos)


def _skip_heredoc(text: str, i: int, delimiter: str, strip: bool) -> int:
    """Index after the here-document body starting at ``i`` (its end line included)."""
    n = len(text)
    while i < n:
        end = text.find("\n", i)
        end = n if end < 0 else end
        body = text[i:end]
        if (body.lstrip("\t") if strip else body) == delimiter:
            return end + 1
        i = end + 1
    return n


class _Parser:
    """Turns tokens into :class:`Command` s with their guard state (a small shell grammar:
    lists, and-or lists, pipelines, if/case/loops/groups/subshells/functions)."""

    def __init__(self) -> None:
        self.stack: List[str] = []
        self.commands: List[Command] = []
        self.words: List[Token] = []
        self.appends: List[Tuple[str, int]] = []
        self.writes: List[str] = []
        self.first_line = 0
        self.last_line = 0
        self.connector: Optional[str] = None  # && or || before the current pipeline
        self.pipeline: List[int] = []  # indexes in self.commands of the current pipeline
        self.awaiting_handler: List[int] = []  # commands followed by ||, handler not seen yet
        self.skip_words = False  # the words of `for x in ...` / `case x in`
        self.in_case_header = False
        self.function_parens = False
        self.redirect: Optional[str] = None  # the operator whose target comes next
        self.redirect_line = 0
        self.last_kind = ""

    def guarded_context(self) -> bool:
        return any(k in ("if", "case", "guarded") for k in self.stack)

    def at_start(self) -> bool:
        return not self.words and not self.skip_words

    def finish(self) -> None:
        """End the current simple command."""
        if self.words or self.appends or self.writes:
            words = self.words
            while words and (_ASSIGNMENT.match(words[0].text) or words[0].value in _WRAPPERS):
                var, _, value = words[0].text.partition("=")
                if value.startswith(("$(mktemp", '"$(mktemp')):
                    self.writes += ["$" + var, "${" + var + "}"]
                words = words[1:]
            cmd = Command(
                words,
                self.appends,
                self.writes,
                (self.first_line, self.last_line),
                self.guarded_context() or self.connector in ("&&", "||"),
                False,
            )
            self.pipeline.append(len(self.commands))
            self.commands.append(cmd)
            if words and self.awaiting_handler:
                self._set_handler(words[0].value)
        self.words, self.appends, self.writes = [], [], []

    def _set_handler(self, handler: str) -> None:
        if handler not in _NO_HANDLER:
            for index in self.awaiting_handler:
                self.commands[index] = self.commands[index]._replace(handled=True)
        self.awaiting_handler = []

    def end_pipeline(self, op: Optional[str]) -> None:
        self.finish()
        if op == "||":
            self.awaiting_handler = list(self.pipeline)
        else:
            self.awaiting_handler = []
        self.pipeline = []
        self.connector = op if op in ("&&", "||") else None

    def open(self, kind: str) -> None:
        if kind == "guarded" and self.awaiting_handler:
            self._set_handler("{")  # cmd || { handler; }
        self.end_pipeline(None)
        self.stack.append(kind)

    def close(self, kinds: Sequence[str]) -> None:
        self.end_pipeline(None)
        if self.stack and self.stack[-1] in kinds:
            self.stack.pop()

    def feed(self, tok: Token) -> None:
        kind = self.last_kind
        self.last_kind = tok.text if tok.kind == "op" else tok.kind
        if self.redirect is not None:
            if tok.kind == "word":
                if self.redirect in _APPENDS:
                    self.appends.append((tok.text, self.redirect_line))
                elif self.redirect in _TRUNCATES:
                    self.writes.append(tok.value)
                self.redirect = None
                self.last_line = tok.line
                return
            self.redirect = None
        if tok.kind == "newline":
            if kind in ("&&", "||", "|", "|&"):
                return  # the list goes on on the next line
            self.skip_words = self.in_case_header = False
            self.end_pipeline(None)
            return
        if tok.kind == "op":
            self._operator(tok)
            return
        self._word(tok)

    def _operator(self, tok: Token) -> None:
        op = tok.text
        if op in _REDIRECTIONS:
            if self.words and tok.adjacent and self.words[-1].text.isdigit():
                self.words.pop()  # 2>>: a file descriptor, not an argument
            if not self.words and not self.appends and not self.writes:
                self.first_line = tok.line
            self.redirect, self.redirect_line = op, tok.line
            self.last_line = tok.line
            return
        top = self.stack[-1] if self.stack else ""
        if op in ("(", ")") and top == "case":
            self.end_pipeline(None)  # a pattern's parentheses
            return
        if op == "(":
            if self.words:
                self.function_parens = True  # name() {...}
                self.words = []
                return
            self.open("guarded" if self.connector in ("&&", "||") else "subshell")
            return
        if op == ")":
            if self.function_parens:
                self.function_parens = False
                self.end_pipeline(None)
                return
            self.close(("subshell", "guarded"))
            return
        if op in ("|", "|&"):
            self.finish()
            return
        if op in ("&&", "||"):
            self.end_pipeline(op)
            return
        if op in _LIST_ENDS:
            self.skip_words = self.in_case_header = False
            self.end_pipeline(None)

    def _word(self, tok: Token) -> None:
        if self.in_case_header:
            if tok.value == "in":
                self.in_case_header = False
                self.end_pipeline(None)
            return
        if self.skip_words:
            if tok.value == "do":
                self.skip_words = False
                self.end_pipeline(None)
            return
        if self.at_start() and not self.appends and not self.writes:
            if self._reserved(tok.value):
                return
            self.first_line = tok.line
        self.words.append(tok)
        self.last_line = tok.line

    def _reserved(self, word: str) -> bool:
        """Handle a reserved word at the start of a command; False when ``word`` is none."""
        if word in ("if", "while", "until"):
            self.open("if" if word == "if" else "loop")
        elif word in ("then", "else", "elif", "do", "!"):
            if word != "!":
                self.end_pipeline(None)
        elif word == "fi":
            self.close(("if",))
        elif word == "done":
            self.close(("loop",))
        elif word == "esac":
            self.close(("case",))
        elif word in ("for", "select"):
            self.open("loop")
            self.skip_words = True
        elif word == "case":
            self.open("case")
            self.in_case_header = True
        elif word == "function":
            self.skip_words = True  # function name {...}: until the newline or ;
        elif word == "{":
            self.open("guarded" if self.connector in ("&&", "||") else "group")
        elif word == "}":
            self.close(("group", "guarded"))
        else:
            return False
        return True


def commands(text: str) -> Tuple[List[Command], Set[int]]:
    """The simple commands of a shell script and the silenced lines."""
    tokens, silenced = tokenize(text)
    parser = _Parser()
    for tok in tokens:
        parser.feed(tok)
    parser.end_pipeline(None)
    return parser.commands, silenced


def _options(words: Sequence[Token]) -> Tuple[Set[str], Set[str]]:
    """Short option letters and long options of a command (up to ``--``)."""
    short: Set[str] = set()
    long: Set[str] = set()
    for w in words[1:]:
        v = w.value
        if v == "--":
            break
        if v.startswith("--"):
            long.add(v)
        elif v.startswith("-") and len(v) > 1:
            short.update(v[1:])
    return short, long


def _operands(words: Sequence[Token]) -> List[str]:
    """The arguments of a command that are not options (quotes removed)."""
    out: List[str] = []
    options = True
    for w in words[1:]:
        if options and w.value == "--":
            options = False
        elif not (options and w.value.startswith("-") and len(w.value) > 1):
            out.append(w.value)
    return out


def _new_in_this_run(path: str, written: Set[str]) -> bool:
    """True for a file this run wrote from scratch before (a ``>`` target, a mktemp file) or
    one under $TMPDIR (new and empty for every run)."""
    return path in written or bool(_SAFE_TARGET.match(path))


def _command_problem(cmd: Command, written: Set[str]) -> Optional[str]:
    """What is wrong with the command itself (not its redirections), or None. ``written``: what
    earlier commands of the script wrote from scratch (:func:`_new_in_this_run`)."""
    if not cmd.words:
        return None
    name = cmd.words[0].value.rsplit("/", 1)[-1]
    short, long = _options(cmd.words)
    fails_again = not (cmd.in_guard or cmd.handled)
    if name in ("useradd", "adduser") and fails_again:
        return (
            f"`{name}` fails when the user exists (a second run): check first, e.g. "
            f"`grep -q '^NAME:' /etc/passwd || {name} ... NAME`"
        )
    if name in ("groupadd", "addgroup") and fails_again:
        if name == "groupadd" and ("f" in short or "--force" in long):
            return None
        fix = "use `groupadd -f` or " if name == "groupadd" else ""
        return (
            f"`{name}` fails when the group exists (a second run): {fix}check first, e.g. "
            f"`grep -q '^NAME:' /etc/group || {name} ... NAME`"
        )
    sources = _operands(cmd.words)[:-1]
    if name == "mv" and fails_again and not all(_new_in_this_run(p, written) for p in sources):
        return (
            "`mv` fails when its source is gone, moved by the run that was interrupted "
            "(`-f` does not help): move only what is there, e.g. "
            "`if [ -e SRC ]; then mv -f SRC DST; fi`"
        )
    if name == "mkdir" and fails_again and "p" not in short and "--parents" not in long:
        return "`mkdir` without `-p` fails when the directory exists (a second run): use `mkdir -p`"
    if name == "ln":
        force = "f" in short or "--force" in long
        symbolic = "s" in short or "--symbolic" in long
        if not force and fails_again:
            fix = "`ln -sfn TARGET LINK`" if symbolic else "`ln -f TARGET LINK`"
            return f"`ln` without `-f` fails when the link exists (a second run): use {fix}"
        no_deref = {"n", "T"} & short or {"--no-dereference", "--no-target-directory"} & long
        if force and symbolic and not no_deref and not cmd.in_guard:
            return (
                "`ln -sf` without `-n`: when LINK already is a symlink to a directory, a second "
                "run creates the link inside that directory: use `ln -sfn TARGET LINK`"
            )
    return None


def check(name: str, data: bytes) -> List[lint.Finding]:
    """Findings (check ``idempotence``) for a shell script's text."""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    cmds, silenced = commands(text)
    findings: List[lint.Finding] = []
    written: Set[str] = set()
    for cmd in cmds:
        first, last = cmd.lines
        problem = _command_problem(cmd, written)
        written.update(cmd.writes)
        if silenced.intersection(range(first, last + 1)):
            continue
        if problem:
            findings.append(lint.Finding(CHECK, name, problem + _SILENCE_HINT, cmd.words[0].line))
        if cmd.in_guard:
            continue
        for target, line in cmd.appends:
            if _new_in_this_run(target.replace('"', "").replace("'", ""), written):
                continue
            findings.append(
                lint.Finding(
                    CHECK,
                    name,
                    f"`>>` to {target} appends again on every run (a second run after an "
                    "interruption or a failure): check first, e.g. "
                    "`grep -qxF 'LINE' FILE || echo 'LINE' >>FILE`, or write the whole file"
                    + _SILENCE_HINT,
                    line,
                )
            )
    findings.sort(key=lambda f: f.line or 0)
    return findings
