"""The analyzer's typed messages: an error report (crosses the llm queue) and a fix suggestion."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Frame(BaseModel):
    """One stack frame, innermost last; `filename` is project-relative for in-project frames."""

    model_config = ConfigDict(extra="forbid")

    filename: str
    lineno: int | None = None
    function: str
    module: str
    line: str = ""
    in_project: bool = False


class ErrorReport(BaseModel):
    """Everything the analyzer needs about one error; built where it happened, analysed elsewhere.

    Built off the hot path (see hean.analyzer.dispatch) and already redacted once; the prompt
    made from it is redacted again as a whole before it may leave the machine.
    """

    model_config = ConfigDict(extra="forbid")

    origin: str = Field(description="where it was caught: excepthook, thread, celery_task:<name>, ...")
    exc_type: str
    message: str = ""
    frames: list[Frame] = Field(default_factory=list)
    traceback_text: str = ""
    sources: dict[str, str] = Field(
        default_factory=dict, description="per in-project file: the numbered lines around its frames"
    )
    source_hash: str = Field(default="", description="hash of the in-project files involved, as they are now")
    log_lines: list[str] = Field(default_factory=list)
    fingerprint: str
    occurred_at: float
    process: str = ""


class FixSuggestion(BaseModel):
    """The model's answer, validated: nothing in it is ever executed, only (maybe) applied as text."""

    model_config = ConfigDict(extra="forbid")

    root_cause: str = Field(description="one sentence: why the error happened")
    explanation: str = Field(description="how the root cause leads to the traceback")
    suspect_file: str | None = Field(description="project-relative path of the faulty line, or null")
    suspect_line: int | None = Field(description="line number of the faulty line, or null")
    fix_description: str = Field(description="what the patch changes and why")
    patch: str = Field(
        description="search/replace blocks (path line, <<<<<<< SEARCH, =======, >>>>>>> REPLACE) "
        "or a unified diff; empty when no code change is proposed"
    )
    affected_files: list[str] = Field(max_length=10, description="project-relative paths the patch changes")
    confidence: float = Field(ge=0.0, le=1.0, description="0-1: how sure the fix is right")
    risk: Literal["low", "medium", "high"] = Field(description="risk of applying the patch")


#: The analysis outcome names stored in the history.
STATUSES = ("ok", "failed", "capped", "not_configured")
