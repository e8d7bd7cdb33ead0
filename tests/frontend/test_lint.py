"""The build checks: every rule of the table, the check directive, and what a
user sees from ``buildpy lint``, ``buildpy build --check`` and a build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frontend import DockerfileError, ResolvedImage, convert
from frontend.lint import RULE_NAMES, RULES, lint
from tests.conftest import Buildpy, write_context

# Rule -> (a Dockerfile that breaks it, the line, the exact message BuildKit
# prints for it). Docker on this machine (20.10) has no `build --check`, so the
# messages are BuildKit's, written from the format strings of its linter rules
# (frontend/dockerfile/linter/ruleset.go) and the arguments its callers pass.
VIOLATIONS = {
    "StageNameCasing": (
        "FROM busybox AS Build\n",
        1,
        "Stage name 'Build' should be lowercase",
    ),
    "FromAsCasing": (
        "FROM busybox as build\n",
        1,
        "'as' and 'FROM' keywords' casing do not match",
    ),
    "NoEmptyContinuation": (
        "FROM busybox\nRUN a && \\\n\n  b\n",
        2,
        "Empty continuation line",
    ),
    "ConsistentInstructionCasing": (
        "FROM busybox\nRUN a\nrun b\nCOPY x /\n",
        3,
        "Command 'run' should match the case of the command majority (uppercase)",
    ),
    "DuplicateStageName": (
        "FROM busybox AS a\nFROM busybox AS a\n",
        2,
        'Duplicate stage name "a", stage names should be unique',
    ),
    "ReservedStageName": (
        "FROM busybox AS scratch\n",
        1,
        'Stage name should not use the same name as reserved stage "scratch"',
    ),
    "JSONArgsRecommended": (
        "FROM busybox\nENTRYPOINT my-app start\n",
        2,
        "JSON arguments recommended for ENTRYPOINT to prevent unintended behavior "
        "related to OS signals",
    ),
    "MaintainerDeprecated": (
        "FROM busybox\nMAINTAINER me <me@example.com>\n",
        2,
        "Maintainer instruction is deprecated in favor of using label",
    ),
    "UndefinedArgInFrom": (
        "ARG VERSION=1\nFROM busybox:$VERSON\n",
        2,
        "FROM argument 'VERSON' is not declared (did you mean VERSION?)",
    ),
    "WorkdirRelativePath": (
        "FROM busybox\nWORKDIR app\n",
        2,
        'Relative workdir "app" can have unexpected results if the base image changes',
    ),
    "UndefinedVar": (
        "FROM busybox\nARG DIR=/x\nCOPY a $DRI/\n",
        3,
        "Usage of undefined variable '$DRI' (did you mean $DIR?)",
    ),
    "MultipleInstructionsDisallowed": (
        'FROM busybox\nCMD ["a"]\nCMD ["b"]\n',
        2,
        "Multiple CMD instructions should not be used in the same stage because "
        "only the last one will be used",
    ),
    "LegacyKeyValueFormat": (
        "FROM busybox\nENV NAME value\n",
        2,
        '"ENV key=value" should be used instead of legacy "ENV key value" format',
    ),
    "InvalidBaseImagePlatform": (
        "FROM arm\n",
        1,
        'Base image arm was pulled with platform "linux/arm64", expected '
        '"linux/amd64" for current build',
    ),
    "RedundantTargetPlatform": (
        "FROM --platform=$TARGETPLATFORM busybox\n",
        1,
        "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as "
        "this is the default behavior",
    ),
    "SecretsUsedInArgOrEnv": (
        "FROM busybox\nARG GITHUB_TOKEN\nENV PUBLIC_KEY=x\n",
        2,
        'Do not use ARG or ENV instructions for sensitive data (ARG "GITHUB_TOKEN")',
    ),
    "InvalidDefaultArgInFrom": (
        "ARG TAG\nFROM busybox:${TAG}\n",
        2,
        "Default value for ARG busybox:${TAG} results in empty or invalid base "
        "image name",
    ),
    "FromPlatformFlagConstDisallowed": (
        "FROM --platform=linux/amd64 busybox AS build\n",
        1,
        'FROM --platform flag should not use constant value "linux/amd64"',
    ),
    "CopyIgnoredFile": (
        "# check=experimental=CopyIgnoredFile\nFROM busybox\nADD secret.txt /\n",
        3,
        'Attempting to Add file "secret.txt" that is excluded by .dockerignore',
    ),
    "InvalidDefinitionDescription": (
        "# check=experimental=InvalidDefinitionDescription\n"
        "# the base stage\nFROM busybox AS base\n",
        3,
        "Comment for FROM should follow the format: `# base <description>`",
    ),
    "ExposeProtoCasing": (
        "FROM busybox\nEXPOSE 80/TcP\n",
        2,
        "Defined protocol '80/TcP' in EXPOSE instruction should be lowercase",
    ),
    "ExposeInvalidFormat": (
        "FROM busybox\nEXPOSE 127.0.0.1:80:80\n",
        2,
        "EXPOSE instruction should not define an IP address or host-port mapping, "
        "found '127.0.0.1:80:80'",
    ),
}


def run_lint(text: str):
    return lint(
        text,
        dockerignore=["secret.txt"],
        base_platform=lambda ref: "linux/arm64" if ref == "arm" else "linux/amd64",
        platform="linux/amd64",
    )


_GO = "https://docs.docker.com/go/dockerfile/rule/"
# BuildKit's rules: name -> (description, URL, experimental), as its linter's
# rule set declares them.
BUILDKIT_RULES = {
    "StageNameCasing": (
        "Stage names should be lowercase",
        _GO + "stage-name-casing/",
        False,
    ),
    "FromAsCasing": (
        "The 'as' keyword should match the case of the 'from' keyword",
        _GO + "from-as-casing/",
        False,
    ),
    "NoEmptyContinuation": (
        "Empty continuation lines will become errors in a future release",
        _GO + "no-empty-continuation/",
        False,
    ),
    "ConsistentInstructionCasing": (
        "All commands within the Dockerfile should use the same casing (either "
        "upper or lower)",
        _GO + "consistent-instruction-casing/",
        False,
    ),
    "DuplicateStageName": (
        "Stage names should be unique",
        _GO + "duplicate-stage-name/",
        False,
    ),
    "ReservedStageName": (
        "Reserved words should not be used as stage names",
        _GO + "reserved-stage-name/",
        False,
    ),
    "JSONArgsRecommended": (
        "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended "
        "behavior related to OS signals",
        _GO + "json-args-recommended/",
        False,
    ),
    "MaintainerDeprecated": (
        "The MAINTAINER instruction is deprecated, use a label instead to define "
        "an image author",
        _GO + "maintainer-deprecated/",
        False,
    ),
    "UndefinedArgInFrom": (
        "FROM command must use declared ARGs",
        _GO + "undefined-arg-in-from/",
        False,
    ),
    "WorkdirRelativePath": (
        "Relative workdir without an absolute workdir declared within the build "
        "can have unexpected results if the base image changes",
        _GO + "workdir-relative-path/",
        False,
    ),
    "UndefinedVar": (
        "Variables should be defined before their use",
        _GO + "undefined-var/",
        False,
    ),
    "MultipleInstructionsDisallowed": (
        "Multiple instructions of the same type should not be used in the same stage",
        _GO + "multiple-instructions-disallowed/",
        False,
    ),
    "LegacyKeyValueFormat": (
        "Legacy key/value format with whitespace separator should not be used",
        _GO + "legacy-key-value-format/",
        False,
    ),
    "InvalidBaseImagePlatform": (
        "Base image platform does not match expected target platform",
        "",
        False,
    ),
    "RedundantTargetPlatform": (
        "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as "
        "this is the default behavior",
        _GO + "redundant-target-platform/",
        False,
    ),
    "SecretsUsedInArgOrEnv": (
        "Sensitive data should not be used in the ARG or ENV commands",
        _GO + "secrets-used-in-arg-or-env/",
        False,
    ),
    "InvalidDefaultArgInFrom": (
        "Default value for global ARG results in an empty or invalid base image name",
        _GO + "invalid-default-arg-in-from/",
        False,
    ),
    "FromPlatformFlagConstDisallowed": (
        "FROM --platform flag should not use a constant value",
        _GO + "from-platform-flag-const-disallowed/",
        False,
    ),
    "CopyIgnoredFile": (
        "Attempting to Copy file that is excluded by .dockerignore",
        _GO + "copy-ignored-file/",
        True,
    ),
    "InvalidDefinitionDescription": (
        "Comment for build stage or argument should follow the format: `# "
        "<arg/stage name> <description>`. If this is not intended to be a "
        "description comment, add an empty line or comment between the "
        "instruction and the comment.",
        _GO + "invalid-definition-description/",
        True,
    ),
    "ExposeProtoCasing": (
        "Protocol in EXPOSE instruction should be lowercase",
        _GO + "expose-proto-casing/",
        False,
    ),
    "ExposeInvalidFormat": (
        "IP address and host-port mapping should not be used in EXPOSE "
        "instruction. This will become an error in a future release",
        _GO + "expose-invalid-format/",
        False,
    ),
}


def test_every_rule_of_the_reference_is_in_the_table() -> None:
    assert set(RULE_NAMES) == set(VIOLATIONS) == set(BUILDKIT_RULES)
    assert len(RULES) == 22
    for rule in RULES:
        assert (rule.description, rule.url, rule.experimental) == BUILDKIT_RULES[
            rule.name
        ], rule.name


@pytest.mark.parametrize("rule", sorted(VIOLATIONS))
def test_text_and_json_give_buildkits_words(rule: str) -> None:
    """Each rule's finding, printed as BuildKit's lint prints it (its
    subrequests/lint Warning.PrintTo and errdefs Source.Print): a blank line,
    ``WARNING: Rule - URL``, the message, ``FILE:LINE``, the framed lines. The
    comparison is with BuildKit's source and documentation: the docker here
    (20.10) has no ``build --check`` to run."""
    text, line, message = VIOLATIONS[rule]
    description, url, _ = BUILDKIT_RULES[rule]
    result = run_lint(text)
    [finding] = [f for f in result.findings if f.rule == rule]
    printed = result.text(text, "Dockerfile").split("\n")
    head = f"WARNING: {rule}" + (f" - {url}" if url else "")
    assert printed[:4] == ["", head, message, f"Dockerfile:{line}"]
    assert printed[4] == "-" * 20
    assert f" {line:>3} | >>> {text.split(chr(10))[line - 1]}" in printed
    report = finding.to_json()
    assert (report["rule"], report["url"], report["description"]) == (
        rule,
        url,
        description,
    )
    assert report["message"] == message and report["line"] == line


def test_text_frame_context_is_buildkits() -> None:
    """Two lines of context each side of a one-line finding, one for a longer
    one; the empty line after the final newline counts, as in BuildKit."""
    text = "FROM busybox\nRUN a\nRUN b\nCMD c\nRUN d\nRUN e\nRUN f\n"
    printed = lint(text).text(text)
    assert printed == (
        "\nWARNING: JSONArgsRecommended - " + _GO + "json-args-recommended/\n"
        "JSON arguments recommended for CMD to prevent unintended behavior "
        "related to OS signals\n"
        "Dockerfile:4\n"
        "--------------------\n"
        "   2 |     RUN a\n"
        "   3 |     RUN b\n"
        "   4 | >>> CMD c\n"
        "   5 |     RUN d\n"
        "   6 |     RUN e\n"
        "--------------------\n"
    )
    text = "FROM busybox\nRUN a && \\\n\n  b\n"
    printed = lint(text).text(text, "x/Dockerfile").split("\n")
    assert printed[3:10] == [
        "x/Dockerfile:2",
        "--------------------",
        "   1 |     FROM busybox",
        "   2 | >>> RUN a && \\",
        "   3 | >>> ",
        "   4 | >>>   b",
        "   5 |     ",
    ]


def test_experimental_rules_run_even_when_skipped() -> None:
    text = "FROM busybox\nCOPY secret.txt /\nMAINTAINER me\n"
    found = run_lint("# check=skip=all;experimental=CopyIgnoredFile\n" + text)
    assert [f.rule for f in found.findings] == ["CopyIgnoredFile"]
    assert [f.rule for f in run_lint(text).findings] == ["MaintainerDeprecated"]


@pytest.mark.parametrize("rule", sorted(VIOLATIONS))
def test_rule_finds_its_violation_only(rule: str) -> None:
    text, line, message = VIOLATIONS[rule]
    found = [(f.rule, f.lines[0], f.message) for f in run_lint(text).findings]
    assert (rule, line, message) in found
    # Each example breaks its own rule and no other, so rules do not overlap.
    assert {r for r, _, _ in found} == {rule}


def test_well_written_dockerfile_has_no_findings() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=busybox\n"
        "FROM $BASE AS build\n"
        "ARG BASE\n"
        "ENV APP_HOME=/app\n"
        "WORKDIR $APP_HOME\n"
        "COPY --chown=1:1 src/ ./src/\n"
        "RUN --mount=type=secret,id=token make\n"
        "FROM build\n"
        'LABEL org.opencontainers.image.authors="me"\n'
        "EXPOSE 8080/udp\n"
        'ENTRYPOINT ["/app/run"]\n'
        'CMD ["--help"]\n'
    )
    assert run_lint(text).findings == []


def test_undefined_var_knows_base_env_and_parent_stages() -> None:
    text = "FROM img AS a\nENV A=1\nFROM a\nWORKDIR $A/$HOME/$GOPATH\n"
    result = lint(text, base_env=lambda ref: ["GOPATH=/go"] if ref == "img" else None)
    assert [f.message for f in result.findings] == [
        "Usage of undefined variable '$HOME'"
    ]


def test_check_directive_skips_and_sets_error() -> None:
    text = "FROM busybox as Build\nMAINTAINER me\n"
    assert {f.rule for f in lint(text).findings} == {
        "FromAsCasing",
        "StageNameCasing",
        "MaintainerDeprecated",
    }
    skipped = lint("# check=skip=FromAsCasing,MaintainerDeprecated\n" + text)
    assert [f.rule for f in skipped.findings] == ["StageNameCasing"]
    assert not skipped.failed
    assert lint("# check=skip=all\n" + text).findings == []
    assert lint("# check=error=true\n" + text).failed
    assert not lint("# check=skip=all;error=true\n" + text).failed
    by_arg = lint(
        "# check=error=true\n" + text,
        build_args={"BUILDKIT_DOCKERFILE_CHECK": "skip=all"},
    )
    assert by_arg.findings == [] and not by_arg.failed


def test_check_comment_after_the_directive_block_is_a_comment() -> None:
    """BuildKit reads ``# check=`` only as a parser directive (or the
    BUILDKIT_DOCKERFILE_CHECK build arg): there is no per-instruction form, so
    such a comment before an instruction skips nothing."""
    text = "FROM busybox AS a\n# check=skip=StageNameCasing\nFROM busybox AS Bad\n"
    assert [f.rule for f in lint(text).findings] == ["StageNameCasing"]


def test_bad_check_directive_is_an_error() -> None:
    with pytest.raises(DockerfileError, match="invalid check directive"):
        lint("# check=error=maybe\nFROM busybox\n")
    with pytest.raises(DockerfileError, match="invalid check directive"):
        lint("# check=skp=all\nFROM busybox\n")


BUSYBOX = ResolvedImage("busybox:latest", "sha256:" + "b" * 64, {"config": {}})


def test_conversion_carries_findings_as_warnings_and_fails_on_error() -> None:
    text = "FROM busybox as build\nRUN true\n"
    plan = convert(text, resolve_image=lambda ref: BUSYBOX)
    assert plan.warnings == [
        "FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)"
    ]
    with pytest.raises(DockerfileError) as info:
        convert("# check=error=true\n" + text, resolve_image=lambda ref: BUSYBOX)
    assert str(info.value) == (
        "Dockerfile:2:1: lint violations found for rules: FromAsCasing (the check "
        "directive sets error=true)"
    )


# --- the commands --------------------------------------------------------------


def test_lint_command_text_and_json(buildpy: Buildpy, tmp_path: Path) -> None:
    good = write_context(
        tmp_path / "good", {"Dockerfile": 'FROM busybox\nCMD ["sh"]\n'}
    )
    bad = write_context(
        tmp_path / "bad",
        {
            "Dockerfile": "# check=experimental=all\nFROM busybox as b\nCOPY x.key /\n",
            ".dockerignore": "*.key\n",
        },
    )
    proc = buildpy.run("lint", "-f", good / "Dockerfile")
    assert (proc.returncode, proc.stdout) == (0, "")
    proc = buildpy.run("lint", "-f", bad / "Dockerfile")
    assert proc.returncode == 0
    assert proc.stdout.startswith(
        f"\nWARNING: FromAsCasing - {_GO}from-as-casing/\n"
        "'as' and 'FROM' keywords' casing do not match\n"
        f"{bad}/Dockerfile:2\n"
    )
    assert f"\nWARNING: CopyIgnoredFile - {_GO}copy-ignored-file/\n" in proc.stdout
    proc = buildpy.run(
        "lint", "--format", "json", bad / "Dockerfile", good / "Dockerfile"
    )
    report = json.loads(proc.stdout)
    assert [r["file"] for r in report] == [f"{bad}/Dockerfile", f"{good}/Dockerfile"]
    assert [w["rule"] for w in report[0]["warnings"]] == [
        "FromAsCasing",
        "CopyIgnoredFile",
    ]
    assert report[0]["warnings"][0]["line"] == 2
    assert report[1]["warnings"] == []


def test_lint_command_exits_3_on_error_and_parse_failure(
    buildpy: Buildpy, tmp_path: Path
) -> None:
    ctx = write_context(
        tmp_path / "ctx",
        {
            "Dockerfile": "# check=error=true\nFROM busybox as b\n",
            "broken.Dockerfile": "FROM busybox\nRUN <<EOF\nnever ends\n",
        },
    )
    proc = buildpy.run("lint", "-f", ctx / "Dockerfile", check=False)
    assert proc.returncode == 3
    assert "\nWARNING: FromAsCasing - " in proc.stdout
    assert proc.stdout.endswith("ERROR: lint violation found for rules: FromAsCasing\n")
    proc = buildpy.run("lint", ctx / "broken.Dockerfile", check=False)
    assert proc.returncode == 3
    assert "unterminated heredoc EOF" in proc.stderr


def test_build_check_lints_without_building(buildpy: Buildpy, tmp_path: Path) -> None:
    ctx = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM nothing-here AS Base\nRUN exit 1\n"}
    )
    proc = buildpy.run("build", "--check", ctx)
    assert "WARNING: StageNameCasing - " in proc.stdout
    assert "\nStage name 'Base' should be lowercase\n" in proc.stdout
    assert not (buildpy.root / "images").exists()


@pytest.mark.slow
def test_plain_build_shows_warnings(busybox: Buildpy, tmp_path: Path) -> None:
    ctx = write_context(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox as b\nRUN true\n"}
    )
    proc = busybox.build(ctx, "--progress", "plain")
    assert (
        "FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)"
        in proc.stderr
    )
