"""Simulated user turns (verl's interactions): after an assistant turn that calls no tool, an
`Interaction` reads the conversation and answers as the user, or ends it; the policy then tries again.

An interaction file looks like verl's `interaction_config_path` YAML::

    interaction:
      - name: gsm8k                    # what a row's extra_info.interaction_kwargs.name picks
        class_name: verl.interactions.gsm8k_interaction.Gsm8kInteraction   # or gsm8k, or a dotted path
        config: {}

A data row opts in with `extra_info.interaction_kwargs` (verl's key): `name` picks the interaction
(the only one when omitted) and the rest (e.g. `ground_truth`, `query`) is passed to it. Rows without
it end their response when the assistant stops, as without interactions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npu_rl.agent_tools.base import entry_config, read_yaml, resolve_class, yaml_entries
from npu_rl.registry import Registry


@dataclass(frozen=True)
class InteractionReply:
    """The user's turn: `message` is appended as a user message (out of the loss, like tool answers);
    `done` ends the conversation after it (verl's should_terminate_sequence); `score` is verl's turn
    score, logged as interaction/score (the reward still grades the final answer)."""

    done: bool
    message: str
    score: float = 0.0


class Interaction(ABC):
    """A simulated user; one instance serves every row, so it keeps no per-conversation state."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = dict(config or {})

    @abstractmethod
    def respond(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> InteractionReply:
        """The reply to the conversation after the prompt so far (`messages`: the assistant's turns and
        the tool and user messages between them, oldest first); `kwargs` is the row's
        interaction_kwargs. Assistant text is model output (untrusted): read it, never run it."""


INTERACTIONS: Registry[type[Interaction]] = Registry("interaction")


@INTERACTIONS.register("gsm8k")
class AnswerFeedback(Interaction):
    """verl's Gsm8kInteraction: a correct last answer gets "Your response is correct!" and ends the
    conversation with score 1; otherwise the user asks for another try (score 0). Correctness is
    npu_rl's math reward's (by meaning, `kwargs["ground_truth"]`), where verl matches the "####"
    answer as a string; `config.data_source` picks the reward's route (default openai/gsm8k). Graded
    in-process within the reward's own time budget (5 s), so a reply is bounded for any output."""

    CORRECT = "Your response is correct!"
    RETRY = "Your response is incorrect! You need to reflect on your answer and try again."

    def respond(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> InteractionReply:
        from reward import compute_score

        answer = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
        source = self.config.get("data_source", "openai/gsm8k")
        correct = bool(compute_score(source, answer, str(kwargs.get("ground_truth", "")))["acc"])
        return InteractionReply(True, self.CORRECT, 1.0) if correct else InteractionReply(False, self.RETRY, 0.0)


# verl's class paths of the interactions registered here
VERL_CLASSES = {"verl.interactions.gsm8k_interaction.Gsm8kInteraction": "gsm8k"}


def load_interactions(path: str | Path) -> dict[str, Interaction]:
    """Interactions by name from a verl-style interaction config YAML file."""
    spec = read_yaml(path, "interaction config")
    found: dict[str, Interaction] = {}
    for i, entry in enumerate(yaml_entries(spec, "interaction", str(path))):
        where = f"{path}: interaction[{i}]"
        config = entry_config(entry, where, ("name", "class_name", "config"), INTERACTIONS)
        class_name = VERL_CLASSES.get(entry["class_name"], entry["class_name"])
        name = entry.get("name") or class_name.rpartition(".")[2]
        if name in found:
            raise ValueError(f"{where}: interaction name {name!r} appears twice")
        found[name] = resolve_class(class_name, INTERACTIONS, Interaction, f"{where}.class_name")(config)
    return found


def chosen_name(names: Collection[str], kwargs: Any) -> str | None:
    """The interaction a row's interaction_kwargs names (the only one when it names none); None for a row
    without interaction_kwargs; ValueError saying what is wrong with them (checked for every row when the
    prompts load, npu_rl.data)."""
    if not kwargs:
        return None
    if not isinstance(kwargs, dict):
        raise ValueError(f"extra_info.interaction_kwargs must be a mapping, got {type(kwargs).__name__}")
    name = kwargs.get("name")
    if name is None and len(names) == 1:
        return next(iter(names))
    if name not in names:
        raise ValueError(
            f"extra_info.interaction_kwargs.name={name!r} is not in the interaction config ({', '.join(sorted(names))})"
        )
    return name


def pick(interactions: dict[str, Interaction], kwargs: Any, where: str) -> Interaction | None:
    """The row's interaction (see `chosen_name`); errors name `where`."""
    try:
        name = chosen_name(interactions, kwargs)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return None if name is None else interactions[name]
