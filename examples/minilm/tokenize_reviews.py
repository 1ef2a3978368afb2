"""Turn {"text", "label"} JSON Lines into token data ({"tokens", "label"}) with a Hugging Face
tokenizer.json: [CLS] ... [SEP], truncated to max_len ids, no padding (the trainer pads with 0).

usage: tokenize_reviews.py TOKENIZER_JSON MAX_LEN < text.jsonl > tokens.jsonl
"""
import json
import sys

from tokenizers import Tokenizer


def main() -> None:
    tokenizer = Tokenizer.from_file(sys.argv[1])
    max_len = int(sys.argv[2])
    tokenizer.enable_truncation(max_length=max_len)
    tokenizer.no_padding()
    for line in sys.stdin:
        if not line.strip():
            continue
        row = json.loads(line)
        ids = tokenizer.encode(row["text"]).ids
        print(json.dumps({"tokens": ids, "label": row["label"]}, separators=(",", ":")))


if __name__ == "__main__":
    main()
