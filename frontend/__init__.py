"""The Dockerfile frontend: parse a Dockerfile and turn it into the build graph."""

from frontend.convert import (
    BuildPlan,
    HistoryEntry,
    ImageResolver,
    NamedContext,
    ResolvedImage,
    convert,
    is_git_source,
    redacted,
)
from frontend.dockerignore import IgnoreMatcher, read_dockerignore
from frontend.errors import DockerfileError
from frontend.parser import AST, Heredoc, Instruction, debug_ast, dump_ast, parse
from frontend.shell import ShellError, process_word, process_words

__all__ = [
    "AST",
    "BuildPlan",
    "DockerfileError",
    "Heredoc",
    "HistoryEntry",
    "IgnoreMatcher",
    "ImageResolver",
    "Instruction",
    "NamedContext",
    "ResolvedImage",
    "ShellError",
    "convert",
    "debug_ast",
    "dump_ast",
    "is_git_source",
    "parse",
    "process_word",
    "process_words",
    "read_dockerignore",
    "redacted",
]
