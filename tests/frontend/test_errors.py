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
    ("FROM busybox\nENV\n", {}, "Dockerfile:2:1: ENV requires at least one argument"),
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
        "FROM busybox\nCOPY git@github.com:moby/buildkit.git /src\n",
        {},
        "Dockerfile:2:1: source can't be a git ref for COPY",
    ),
    (
        "FROM busybox\nADD --checksum=sha256:"
        + "0" * 64
        + " https://example.com/r.git /src\n",
        {},
        "Dockerfile:2:1: ADD --checksum of a git source is a commit, not 'sha256:"
        + "0" * 64
        + "'",
    ),
    (
        "FROM busybox\nCOPY https://example.com/x /x\n",
        {},
        "Dockerfile:2:1: source can't be a URL for COPY",
    ),
    (
        "FROM busybox\nADD https://example.com/ /dir/\n",
        {},
        "Dockerfile:2:1: cannot determine a file name from the URL "
        "https://example.com/: give the destination as a file path",
    ),
    (
        "FROM busybox\nADD --checksum=sha256:"
        + "0" * 64
        + " https://example.com/a https://example.com/b /dir/\n",
        {},
        "Dockerfile:2:1: ADD --checksum can only be used with a single URL source",
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
        "Dockerfile:2:1: invalid value 'bridge' for --network: expected one of "
        "default, none, host",
    ),
    (
        "FROM busybox\nRUN --security=insecur x\n",
        {},
        "Dockerfile:2:1: invalid value 'insecur' for --security: expected one of "
        "sandbox, insecure (did you mean insecure?)",
    ),
    (
        "FROM busybox\nRUN --mount=type=cahce,target=/c x\n",
        {},
        "Dockerfile:2:1: --mount=type=cahce,target=/c: unsupported mount type "
        "'cahce': expected one of bind, cache, tmpfs, secret, ssh (did you mean "
        "cache?)",
    ),
    (
        "FROM busybox\nRUN --mount=type=cache,traget=/c x\n",
        {},
        "Dockerfile:2:1: --mount=type=cache,traget=/c: unexpected key 'traget' in "
        "'traget=/c' (did you mean target?)",
    ),
    (
        "FROM busybox\nRUN --mount=type=bind,target=/c,sharing=locked x\n",
        {},
        "Dockerfile:2:1: --mount=type=bind,target=/c,sharing=locked: unexpected "
        "key 'sharing' for mount type 'bind'",
    ),
    (
        "FROM busybox\nRUN --mount=type=tmpfs x\n",
        {},
        "Dockerfile:2:1: --mount=type=tmpfs: mount type 'tmpfs' needs a target: "
        "add target=/path",
    ),
    (
        "FROM busybox\nRUN --mount=type=cache,target=/c,mode=999 x\n",
        {},
        "Dockerfile:2:1: --mount=type=cache,target=/c,mode=999: invalid value "
        "'999' for mount option mode: expected an octal mode like 0755",
    ),
    (
        "FROM busybox\nRUN --mount=type=cache,target=/c,sharing=all x\n",
        {},
        "Dockerfile:2:1: --mount=type=cache,target=/c,sharing=all: unsupported "
        "sharing value 'all': expected one of shared, private, locked",
    ),
    (
        "FROM busybox\nRUN --mount=type=tmpfs,target=/t,size=lots x\n",
        {},
        "Dockerfile:2:1: --mount=type=tmpfs,target=/t,size=lots: invalid size "
        "'lots' for mount option size: expected bytes or a number with k, m, g, t "
        "or p",
    ),
    (
        "FROM busybox\nRUN --mount=target=/c,source x\n",
        {},
        "Dockerfile:2:1: --mount=target=/c,source: invalid field 'source': must "
        "be a key=value pair",
    ),
    (
        "FROM busybox\nRUN --mount=type=secret,id=a,src=b x\n",
        {},
        "Dockerfile:2:1: --mount=type=secret,id=a,src=b: secret mount: both source "
        "and id are set, give one",
    ),
    (
        "FROM busybox\nRUN --mount=type=cache,target=/c,ro=maybe x\n",
        {},
        "Dockerfile:2:1: --mount=type=cache,target=/c,ro=maybe: invalid value "
        "'maybe' for mount option ro: expected a boolean",
    ),
    (
        "FROM busybox\nRUN --mount=type=cache,target=/ x\n",
        {},
        "Dockerfile:2:1: invalid --mount target '/': a mount cannot cover the root "
        "filesystem",
    ),
    (
        "FROM busybox\nRUN --mount=type=bind,target=/c,from=nope x\n",
        {},
        "Dockerfile:2:1: base image nope not found in the local store; import it "
        "with `buildpy import` or pull it",
    ),
    (
        "# syntax=docker/dockerfile:1-labs\nFROM busybox\n"
        "RUN --device=vendor1.com/device,required=true x\n",
        {},
        "Dockerfile:3:1: RUN --device is labs syntax (docker/dockerfile:1-labs), "
        "not supported",
    ),
    (
        "FROM busybox\nADD --checksum=md5:x a /\n",
        {},
        "Dockerfile:2:1: invalid checksum 'md5:x': expected sha256:<64 hex digits> "
        "or a git commit",
    ),
    (
        "FROM busybox\nADD --checksum=sha256:" + "a" * 64 + " a /\n",
        {},
        "Dockerfile:2:1: ADD --checksum can only be used with URL and git sources",
    ),
    (
        "FROM busybox\nADD --keep-git-dir=yes a /\n",
        {},
        "Dockerfile:2:1: expecting boolean value for flag --keep-git-dir, not: yes",
    ),
    (
        "FROM busybox\nCOPY --exclud=*.o a /\n",
        {},
        "Dockerfile:2:1: unknown flag: --exclud (did you mean --exclude?)",
    ),
    (
        "FROM --platform=linux busybox\n",
        {},
        "Dockerfile:1:1: invalid platform 'linux': expected os/arch[/variant], like "
        "linux/amd64",
    ),
    (
        "FROM --platform=linux/s390x busybox\n",
        {},
        "Dockerfile:1:1: FROM --platform=linux/s390x: building for another platform "
        "than linux/amd64 is not supported yet",
    ),
    (
        "FROM busybox\nHEALTHCHECK --intervall=5s CMD true\n",
        {},
        "Dockerfile:2:1: unknown flag: --intervall (did you mean --interval?)",
    ),
    (
        "FROM busybox\nHEALTHCHECK --retries=x CMD true\n",
        {},
        "Dockerfile:2:1: --retries must be a number >= 0, not 'x'",
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
        'FROM busybox\nRUN ["cat", 1] <<EOF\nx\nEOF\n',
        {},
        "Dockerfile:2:1: when using JSON array syntax, arrays must be comprised "
        "of strings only",
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
