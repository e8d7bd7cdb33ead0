"""Every mistake a user can make in a Dockerfile, and the one line it gives."""

from __future__ import annotations

import pytest

from frontend import DockerfileError, ResolvedImage, convert

IMAGE = ResolvedImage("busybox:latest", "sha256:" + "b" * 64, {"config": {}})


def resolve(ref: str) -> ResolvedImage:
    if ref == "busybox":
        return IMAGE
    raise LookupError(ref)


# (Dockerfile, convert kwargs, the exact str() of the error)
ERRORS = [
    ("", {}, "Dockerfile: file with no instructions"),
    ("# only\n\n", {}, "Dockerfile: file with no instructions"),
    (
        "FROM busybox\nRUNN echo hi\n",
        {},
        "Dockerfile:2:1: unknown instruction: RUNN (did you mean RUN?)",
    ),
    (
        "FROM busybox\ncopy --chwon=1 a /\n",
        {},
        "Dockerfile:2:1: unknown flag: --chwon (did you mean --chown?)",
    ),
    (
        "FROM busybox\nCOPY --from a /\n",
        {},
        "Dockerfile:2:1: missing a value on flag: --from",
    ),
    (
        "FROM busybox\nCOPY --from=a --from=b x /\n",
        {},
        "Dockerfile:2:1: duplicate flag specified: --from",
    ),
    (
        "FROM busybox AS build\n",
        {"target": "biuld"},
        "Dockerfile: target stage 'biuld' could not be found (did you mean build?)",
    ),
    (
        "FROM nosuch:1\n",
        {},
        "Dockerfile:1:1: base image nosuch:1 not found in the local store; "
        "import it with `buildpy import` or pull it",
    ),
    (
        "FROM busybox\nCOPY --from=nosuch /a /b\n",
        {},
        "Dockerfile:2:1: base image nosuch not found in the local store; "
        "import it with `buildpy import` or pull it",
    ),
    (
        "FROM a AS b\nFROM b AS a\n",
        {},
        "Dockerfile:2:1: circular dependency detected on stage: a (a -> b -> a)",
    ),
    (
        "FROM busybox AS a\nCOPY --from=b / /\nFROM busybox AS b\nCOPY --from=a / /\n",
        {},
        "Dockerfile:3:1: circular dependency detected on stage: b (b -> a -> b)",
    ),
    ("FROM busybox\nENV PATH\n", {}, "Dockerfile:2:1: ENV must have two arguments"),
    (
        "FROM busybox\nENV A=1 B\n",
        {},
        "Dockerfile:2:1: syntax error: can't find = in 'B', expected name=value",
    ),
    (
        'FROM busybox\nCMD ["a", 1]\n',
        {},
        "Dockerfile:2:1: when using JSON array syntax, arrays must be comprised of "
        "strings only",
    ),
    (
        "RUN echo\nFROM busybox\n",
        {},
        "Dockerfile:1:1: no build stage in current context: RUN must come after "
        "FROM (only ARG may come before it)",
    ),
    (
        "ARG X=1\n",
        {},
        "Dockerfile:1:1: no build stage: a Dockerfile needs a FROM instruction",
    ),
    (
        "FROM busybox AS 1bad\n",
        {},
        "Dockerfile:1:1: invalid name for build stage: '1bad', name can't start "
        "with a number or contain symbols",
    ),
    (
        "FROM busybox AS x\nFROM busybox AS x\n",
        {},
        "Dockerfile:2:1: duplicate stage name 'x'",
    ),
    (
        "FROM busybox x\n",
        {},
        "Dockerfile:1:1: FROM requires either one or three arguments: FROM image "
        "[AS name]",
    ),
    ("ARG B\nFROM $B\n", {}, "Dockerfile:2:1: base name ($B) should not be blank"),
    (
        "FROM busybox\nCOPY onlyone\n",
        {},
        "Dockerfile:2:1: COPY requires at least two arguments, but only 1 was "
        "provided. Destination could not be determined",
    ),
    (
        "FROM busybox\nCOPY a b /dest\n",
        {},
        "Dockerfile:2:1: When using COPY with more than one source file, the "
        "destination must be a directory and end with a /",
    ),
    (
        "FROM busybox\nADD https://example.com/x /x\n",
        {},
        "Dockerfile:2:1: ADD of a URL or git repository is not supported yet",
    ),
    (
        "FROM busybox\nCOPY --chmod=rwx a /\n",
        {},
        "Dockerfile:2:1: invalid --chmod value 'rwx': expected an octal mode like 0755",
    ),
    (
        "FROM busybox\nCOPY --from=$X a /\n",
        {},
        "Dockerfile:2:1: variable expansion is not supported in --from: $X",
    ),
    (
        "FROM busybox\nCOPY --from=5 a /\n",
        {},
        "Dockerfile:2:1: invalid from flag value 5: index out of bounds (the "
        "Dockerfile has 1 stages)",
    ),
    (
        "FROM busybox\nRUN --network=bridge x\n",
        {},
        "Dockerfile:2:1: unsupported network mode 'bridge': expected default, none "
        "or host",
    ),
    (
        "FROM busybox\nRUN --mount=type=cache,target=/c x\n",
        {},
        "Dockerfile:2:1: RUN --mount is not supported yet",
    ),
    ("FROM busybox\nRUN\n", {}, "Dockerfile:2:1: RUN requires at least one argument"),
    (
        "FROM busybox\nSHELL /bin/bash -c\n",
        {},
        "Dockerfile:2:1: SHELL requires the arguments to be in JSON form: SHELL "
        '["sh", "-c"]',
    ),
    (
        "FROM busybox\nEXPOSE 80/foo\n",
        {},
        "Dockerfile:2:1: invalid proto: foo in EXPOSE 80/foo (expected tcp, udp or "
        "sctp)",
    ),
    ("FROM busybox\nEXPOSE abc\n", {}, "Dockerfile:2:1: invalid containerPort: abc"),
    (
        'FROM busybox\nVOLUME ""\n',
        {},
        "Dockerfile:2:1: VOLUME specified can not be an empty string",
    ),
    (
        "FROM busybox\nHEALTHCHECK --interval=5x CMD true\n",
        {},
        "Dockerfile:2:1: invalid duration for --interval: '5x'",
    ),
    (
        "FROM busybox\nHEALTHCHECK RUN true\n",
        {},
        "Dockerfile:2:1: unknown type 'RUN' in HEALTHCHECK (try CMD)",
    ),
    (
        "FROM busybox\nONBUILD FROM x\n",
        {},
        "Dockerfile:2:1: FROM isn't allowed as an ONBUILD trigger",
    ),
    (
        'FROM busybox\nENV A="${B:?B is required}"\n',
        {},
        "Dockerfile:2:1: failed to process '\"${B:?B is required}\"': B: B is required",
    ),
    (
        'FROM busybox\nLABEL a="unterminated\n',
        {},
        "Dockerfile:2:1: failed to process '\"unterminated': unexpected end of "
        "statement while looking for matching double-quote",
    ),
    (
        "FROM busybox\nRUN cat <<EOF\nno end\n",
        {},
        "Dockerfile:2:1: unterminated heredoc EOF: no line EOF ends it",
    ),
    (
        "# escape=x\nFROM busybox\n",
        {},
        "Dockerfile:1:1: invalid escape token 'x': expected ` or \\",
    ),
    (
        "# escape=`\n# escape=\\\nFROM busybox\n",
        {},
        "Dockerfile:2:1: only one escape parser directive can be used",
    ),
    (
        "FROM busybox\n  RUN a && \\\n   b\nRUNN x\n",
        {},
        "Dockerfile:4:1: unknown instruction: RUNN (did you mean RUN?)",
    ),
]


@pytest.mark.parametrize(("text", "kwargs", "message"), ERRORS)
def test_error_table(text: str, kwargs: dict, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        convert(text, resolve_image=resolve, **kwargs)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_error_points_at_whole_instruction_and_frames_it() -> None:
    text = 'FROM busybox\nRUN a \\\n  && b\nRUNN echo hi\nCMD ["sh"]\n'
    with pytest.raises(DockerfileError) as info:
        convert(text, resolve_image=resolve, filename="app.Dockerfile")
    err = info.value
    assert (err.filename, err.line, err.column, err.end_line) == (
        "app.Dockerfile",
        4,
        1,
        4,
    )
    assert err.hint == "did you mean RUN?"
    assert err.frame(text) == (
        "--------------------\n"
        "   3 |       && b\n"
        "   4 | >>> RUNN echo hi\n"
        '   5 |     CMD ["sh"]\n'
        "--------------------"
    )


def test_frame_marks_every_line_of_a_multiline_instruction() -> None:
    text = "FROM busybox\nENV A=1 \\\n  B\n"
    with pytest.raises(DockerfileError) as info:
        convert(text, resolve_image=resolve)
    assert (info.value.line, info.value.end_line) == (2, 3)
    assert info.value.frame(text).splitlines()[2:4] == [
        "   2 | >>> ENV A=1 \\",
        "   3 | >>>   B",
    ]


def test_column_of_indented_instruction() -> None:
    with pytest.raises(DockerfileError) as info:
        convert("FROM busybox\n   RUNN x\n", resolve_image=resolve)
    assert (info.value.line, info.value.column) == (2, 4)
