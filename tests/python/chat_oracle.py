#!/usr/bin/env python3
"""The transformers side of tests/chat.rs: what `apply_chat_template` makes of conversations.

Usage: chat_oracle.py CASES.json

CASES.json is a list of {"model": dir, "tagged_template": str, "conversations": [[message, ...], ...]}.
For each model directory (loaded with AutoTokenizer, as a user of transformers would) and each
conversation it prints, as one JSON list on stdout, per case a list of per-conversation objects:

  text     apply_chat_template(messages, tokenize=False)
  ids      apply_chat_template(messages, tokenize=True, return_dict=False)
  mask     return_assistant_tokens_mask of the same conversation rendered with `tagged_template`,
           the model's template with `{% generation %}` around the assistant content only
           (transformers marks every token whose offsets overlap a generation block)
  tagged_ids  the ids of that tagged rendering (must equal `ids`: same text)
  offsets  the (start, end) character offsets of `ids` in `text`
"""

import json
import sys

from transformers import AutoTokenizer


def main() -> None:
    cases = json.load(open(sys.argv[1], encoding="utf-8"))
    out = []
    for case in cases:
        tok = AutoTokenizer.from_pretrained(case["model"])
        results = []
        for messages in case["conversations"]:
            text = tok.apply_chat_template(messages, tokenize=False)
            ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
            tagged = tok.apply_chat_template(
                messages,
                chat_template=case["tagged_template"],
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            results.append(
                {
                    "text": text,
                    "ids": list(ids),
                    "mask": list(tagged["assistant_masks"]),
                    "tagged_ids": list(tagged["input_ids"]),
                    "offsets": [list(o) for o in enc["offset_mapping"]],
                }
            )
        out.append(results)
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
