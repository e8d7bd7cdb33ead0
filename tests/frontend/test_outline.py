"""frontend.outline: the stages of a Dockerfile and what its target reads."""

from __future__ import annotations

import pytest

from frontend import DockerfileError
from frontend.outline import BuildArg, Target, outline, targets

DOCKERFILE = """\
# syntax=docker/dockerfile:1
# GO_VERSION is the Go release to build with
ARG GO_VERSION=1.22
ARG UNUSED=x

# base is where every stage starts
FROM golang:${GO_VERSION}-alpine AS base
# the module proxy
ARG GOPROXY=direct
RUN --mount=type=secret,id=netrc,required=true --mount=type=ssh go mod download

FROM base AS test
RUN go test ./...

# build makes
# the binary
FROM base AS build
ARG GO_VERSION
RUN --mount=type=secret,id=token go build -o /app

FROM scratch
COPY --from=build /app /app
"""


def test_targets_are_the_stages_with_their_comments() -> None:
    assert targets(DOCKERFILE) == [
        Target("base", "is where every stage starts", False),
        Target("test", "", False),
        Target("build", "makes the binary", False),
        Target("3", "", True),
    ]


def test_outline_holds_what_the_target_and_its_stages_read() -> None:
    found = outline(DOCKERFILE, build_args={"GOPROXY": "https://proxy"})
    assert found.target == Target("3", "", True)
    # UNUSED is no stage's; GO_VERSION is the global one, redeclared in build.
    assert found.args == [
        BuildArg("GO_VERSION", "1.22", "is the Go release to build with"),
        BuildArg("GOPROXY", "https://proxy", "the module proxy"),
    ]
    assert found.secrets == [("netrc", True), ("token", False)]
    assert found.ssh == [("default", False)]
    # The test stage does not need build: no token secret.
    assert outline(DOCKERFILE, target="test").secrets == [("netrc", True)]


def test_outline_of_a_missing_target_names_it() -> None:
    with pytest.raises(DockerfileError, match="target stage 'nope' could not be"):
        outline(DOCKERFILE, target="nope")
