"""Personalisation on the default model (issue 20's second benchmark; not a test): facts about a
user told to a session over several turns, then enough unrelated turns that they have left the
window, then questions scored as multiple choice by the model's likelihood of each candidate.

python bench/personal_bench.py [--profiles 50] [--window 256] [--dtype f32] [--weights dense]
                               [--rules sgd,rms,inplace] [--adapter PATH] [--out runs/bench/personal]

Profiles (a rule fixed here before any result was seen): `profiles` users drawn with
random.Random(20) from the value pools below (name, city, job, pet, food, project), each fact
told twice in two of its three phrasings over three user turns (each answered by a fixed
assistant line), then the FILLER exchanges (unrelated questions, the same for every profile:
about 400 tokens, so that a 256-token window holds none of the facts). Turns are plain text
("User: ...\\nAssistant: ...\\n"), ingested with keep_in_context: every token is learned.

Questions: one per fact, "User: <question>\\nAssistant: <answer start>" followed by each of
6 candidates (the true value and 5 others of its pool, drawn with the profile's seed); the
prediction is the candidate whose tokens have the highest summed log-probability (Score, a dry
run: the session keeps nothing of the questions; a chunk completed inside one is learned on the
throw-away copy, as dynamic evaluation does). Accuracy per variant, with a 95% bootstrap interval
over profiles (2000 resamples, seed 0), and the share of the gap between no adaptation and the
whole conversation in context that each learning rule closes:
  none          update rule off, window W
  ntp sgd       ntp_gradient as shipped before issue 20 (every 3rd layer, lr 0.3), window W
  ntp rms       ntp_gradient as shipped (models/smollm2-135m-instruct/ttt.json), window W
  in-place      update rule inplace over the In-Place adapter (--adapter, default the model's
                ttt_adapter.safetensors, else runs/adapter's) with the dW decay it was trained with, window W
  full context  update rule off, the window holds the whole conversation (the upper bound)
  fresh         a new session, nothing told (chance is 1/6)
  other         the ntp rms sessions again, session i (told profile i) asked profile i+1's questions: nothing leaks
                between sessions when its accuracy stays at the fresh session's (profiles share
                values by chance, so "told" also counts how often it picks profile i's own value
                when that is among the candidates)
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import pathlib
import random
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "clients/python"), str(ROOT / "build/python")]
import adaptation_bench as ab  # noqa: E402
from adaptd_client import Client  # noqa: E402
from tools.gguf_tokenizer import hf_tokenizer  # noqa: E402

MODEL = ROOT / "models/smollm2-135m-instruct"
SGD = {"ttt_layers": list(range(0, 30, 3)), "ttt_chunk": 64, "ttt_lr": 0.3}
CANDIDATES = 6

POOLS = {
    "name": ["Ada", "Bruno", "Chiara", "Dmitri", "Esther", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Keiko",
             "Lars", "Mira", "Nadia", "Oskar", "Priya"],
    "city": ["Lisbon", "Oslo", "Nairobi", "Toronto", "Krakow", "Osaka", "Lima", "Dublin", "Seville", "Tbilisi",
             "Adelaide", "Montreal", "Bergen", "Porto", "Hanoi", "Zurich"],
    "job": ["nurse", "carpenter", "pilot", "librarian", "chemist", "baker", "architect", "firefighter",
            "translator", "dentist", "geologist", "plumber"],
    "pet": ["parrot", "tortoise", "hamster", "goldfish", "rabbit", "ferret", "iguana", "beagle", "poodle",
            "cockatoo"],
    "food": ["sushi", "lasagna", "falafel", "ramen", "paella", "dumplings", "tacos", "risotto", "pancakes",
             "curry"],
    "project": ["a treehouse", "a sailboat", "a vegetable garden", "a chess engine", "a quilt", "a telescope",
                "a podcast", "a birdhouse", "a novel", "a mural"],
}
TELL = {
    "name": ["My name is {v}.", "You can call me {v}, that is my name.", "I'm {v}, by the way."],
    "city": ["I live in {v}.", "My home is in {v}.", "I have lived in {v} for years."],
    "job": ["I work as a {v}.", "My job is being a {v}.", "I have been a {v} for a long time."],
    "pet": ["I have a pet {v}.", "My pet is a {v}.", "At home I look after my {v}."],
    "food": ["My favourite food is {v}.", "I love eating {v}.", "Nothing beats {v} for dinner, in my opinion."],
    "project": ["These days I am building {v}.", "My current project is {v}.", "I spend my weekends on {v}."],
}
ASK = {
    "name": ("What is my name?", "Your name is"),
    "city": ("Which city do I live in?", "You live in"),
    "job": ("What do I do for a living?", "You work as a"),
    "pet": ("What kind of pet do I have?", "You have a pet"),
    "food": ("What is my favourite food?", "Your favourite food is"),
    "project": ("What am I working on these days?", "You are building"),
}
ACK = ["Nice to meet you! Tell me more.", "Thanks for sharing that with me.", "Got it, I will keep that in mind."]
FILLER = [
    ("How do I reverse a list in Python?", "Use the reverse() method, or slicing with a step of minus one."),
    ("What is the boiling point of water at sea level?", "It is 100 degrees Celsius, or 212 degrees Fahrenheit."),
    ("Can you explain what a prime number is?", "A prime number has exactly two divisors: one and itself."),
    ("Why is the sky blue?", "Sunlight scatters off air molecules, and blue light scatters the most."),
    ("How many continents are there?", "Most people count seven: Africa, Antarctica, Asia, Australia, Europe, "
     "North America and South America."),
    ("What does HTTP stand for?", "It stands for Hypertext Transfer Protocol, the protocol of the web."),
    ("How long should I boil an egg?", "About seven minutes for a firm white and a soft yolk."),
    ("What is photosynthesis?", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote it in the 1590s."),
    ("What is the speed of light?", "About 300,000 kilometres per second in a vacuum."),
    ("How do vaccines work?", "They train the immune system to recognise a pathogen before an infection."),
    ("What is a haiku?", "A short poem of three lines with five, seven and five syllables."),
    ("How does a compass work?", "Its magnetised needle lines up with the magnetic field of the Earth."),
    ("What is the largest ocean?", "The Pacific Ocean is the largest and the deepest."),
]


def profiles(n: int) -> list[dict]:
    rng = random.Random(20)
    out = []
    for i in range(n):
        p = {k: rng.choice(v) for k, v in POOLS.items()}
        # Each fact told twice, in two of its phrasings, spread over three turns.
        said = [(k, TELL[k][j].format(v=p[k])) for k in POOLS for j in rng.sample(range(3), 2)]
        rng.shuffle(said)
        turns = [" ".join(s for _, s in said[t::3]) for t in range(3)]
        choices = {k: sorted([p[k]] + rng.sample([x for x in POOLS[k] if x != p[k]], CANDIDATES - 1)) for k in POOLS}
        out.append({"facts": p, "turns": turns, "choices": choices})
    return out


def conversation(p: dict) -> list[str]:
    told = [f"User: {t}\nAssistant: {ACK[k]}\n" for k, t in enumerate(p["turns"])]
    return told + [f"User: {q}\nAssistant: {a}\n" for q, a in FILLER]


def answer_logprob(c: Client, session: str, tok, prefix: str, candidate: str) -> float:
    r = c.score(session, prefix + " " + candidate + ".")
    n = len(tok.encode(prefix).ids)
    assert list(r.token_ids[:n]) == tok.encode(prefix).ids, "the prefix's tokens are not the text's first ones"
    return sum(r.logprobs[n - 1:])  # the candidate's tokens and the full stop


def ask(c: Client, session: str, tok, p: dict, told: dict | None = None) -> dict[str, bool]:
    """Per fact whether the best candidate is p's value; with `told` (the profile the session was
    told, when not p) also "told:<fact>": whether it picked told's value, when a candidate."""
    right = {}
    for k, (q, a) in ASK.items():
        prefix = f"User: {q}\nAssistant: {a}"
        scores = {v: answer_logprob(c, session, tok, prefix, v) for v in p["choices"][k]}
        best = max(scores, key=scores.get)
        right[k] = best == p["facts"][k]
        if told is not None and told["facts"][k] in scores and told["facts"][k] != p["facts"][k]:
            right[f"told:{k}"] = best == told["facts"][k]
    return right


def tell(target: str, session: str, p: dict, window: int, rule: str) -> None:
    with Client(target, ab.KEY) as c:
        c.create_session(session, update_rule=rule, max_context_tokens=window)
        for k, turn in enumerate(conversation(p)):
            usage = c.ingest(session, turn, keep_in_context=True, request_id=f"turn-{k}")
            cost = ab.COST.setdefault(session, [0.0, 0])
            cost[0] += usage.update_seconds
            cost[1] += usage.updates_applied


def variant(target: str, name: str, people: list[dict], tok, window: int, rule: str, told: bool = True,
            shift: int = 0, reuse: bool = False) -> list[dict[str, bool]]:
    """Per profile its questions' right/wrong; session i is told profile i (unless reused: told
    already) and asked profile i + shift's."""
    def one(i: int) -> dict[str, bool]:
        session = f"{name}-{i}"
        if reuse:
            pass
        elif told:
            tell(target, session, people[i], window, rule)
        else:
            with Client(target, ab.KEY) as c:
                c.create_session(session, update_rule=rule, max_context_tokens=window)
        with Client(target, ab.KEY) as c:
            return ask(c, session, tok, people[(i + shift) % len(people)], people[i] if shift else None)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        out = list(pool.map(one, range(len(people))))
    print(f"{name}: accuracy {accuracy(out):.3f}", flush=True)  # as it goes: a long run keeps what it measured
    return out


def accuracy(r: list[dict[str, bool]], told: bool = False) -> float:
    """The share of questions answered right (told: of "told:" entries, the share picking the told value)."""
    keep = [v for x in r for k, v in x.items() if k.startswith("told:") == told]
    return sum(keep) / max(len(keep), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profiles", type=int, default=50)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--weights", default="dense")
    ap.add_argument("--rules", default="sgd,rms,inplace", help="the learning rules to run (sgd, rms, inplace)")
    ap.add_argument("--adapter", default="", help="the In-Place adapter for the inplace rule")
    ap.add_argument("--out", default="runs/bench/personal")
    args = ap.parse_args()
    out, keys = ab.fresh_out(args.out)
    tok = hf_tokenizer(str(MODEL / "model.gguf"))
    people = profiles(args.profiles)
    lengths = [len(tok.encode("".join(conversation(p))).ids) for p in people]
    told_tokens = [len(tok.encode("".join(conversation(p)[:3])).ids) for p in people]
    filler_tokens = min(lengths[i] - told_tokens[i] for i in range(len(people)))
    if filler_tokens + 32 < args.window:
        raise SystemExit(f"the filler ({filler_tokens} tokens) does not push the facts out of a {args.window}-token window")
    shipped = json.loads((MODEL / "ttt.json").read_text())
    if shipped.get("ttt_ntp_step") != "rms":
        raise SystemExit("models/smollm2-135m-instruct/ttt.json does not use the rms step")
    full = max(lengths) + 256
    flags = (f"--dtype={args.dtype}", f"--weights={args.weights}", "--system_prompt=", f"--max_context_tokens={full}")

    stock, with_adapter = ab.adapter_dirs(MODEL, out, args.adapter)
    rules = args.rules.split(",")

    def serve(name: str, ttt: dict, model: pathlib.Path = stock, extra: tuple = ()) -> ab.Server:
        return ab.serve_with(model, out, keys, name, ttt, (*flags, *extra))

    t0 = time.time()
    sgd = serve("sgd", SGD) if "sgd" in rules else None
    rms = serve("rms", shipped)
    inplace = serve("inplace", shipped, with_adapter, ab.adapter_flags(with_adapter)) if "inplace" in rules and with_adapter else None
    try:
        results = {
            "none": variant(rms.target, "none", people, tok, args.window, "off"),
            "full context": variant(rms.target, "full", people, tok, full, "off"),
            "fresh": variant(rms.target, "fresh", people, tok, args.window, "off", told=False),
        }
        if sgd:
            results["ntp sgd"] = variant(sgd.target, "sgd", people, tok, args.window, "ntp_gradient")
        results["ntp rms"] = variant(rms.target, "rms", people, tok, args.window, "ntp_gradient")
        if inplace:
            results["in-place"] = variant(inplace.target, "inplace", people, tok, args.window, "inplace")
        results["other"] = variant(rms.target, "rms", people, tok, args.window, "ntp_gradient", shift=1, reuse=True)
        seconds = time.time() - t0
    finally:
        for server in (sgd, rms, inplace):
            if server:
                server.stop()

    rng = random.Random(0)
    n = len(people)
    samples = [[rng.randrange(n) for _ in range(n)] for _ in range(2000)]

    def interval(f) -> tuple[float, float]:
        vals = sorted(v for v in (f(s) for s in samples) if v is not None)  # None: a degenerate resample
        return vals[int(0.025 * len(vals))], vals[int(0.975 * len(vals)) - 1]

    def acc_of(name: str, idx: list[int]) -> float:
        return accuracy([results[name][i] for i in idx])

    print(f"\n{n} profiles x {len(ASK)} questions, {CANDIDATES} candidates each (chance {1 / CANDIDATES:.2f}); "
          f"window {args.window}; conversations of {min(lengths)}-{max(lengths)} tokens, facts in the first "
          f"{max(told_tokens)}; {args.dtype}, weights {args.weights}; {seconds:.0f} s")
    print("| variant | accuracy | 95% interval | gap closed (none -> full context) | 95% interval |")
    print("|---|---|---|---|---|")
    summary = {}
    for name in results:
        acc = acc_of(name, list(range(n)))
        lo, hi = interval(lambda s, name=name: acc_of(name, s))
        gap = ""
        if name in ("ntp sgd", "ntp rms", "in-place"):
            def closed(s, name=name):
                none, full_ = acc_of("none", s), acc_of("full context", s)
                return (acc_of(name, s) - none) / (full_ - none) if full_ != none else None
            g = closed(list(range(n)))
            glo, ghi = interval(closed)
            gap = f"{100 * g:.0f}% | [{100 * glo:.0f}%, {100 * ghi:.0f}%]"
        else:
            gap = " | "
        summary[name] = {"accuracy": acc, "interval": [lo, hi], "per_profile": results[name]}
        print(f"| {name} | {acc:.3f} | [{lo:.3f}, {hi:.3f}] | {gap} |")
    other_told = accuracy(results["other"], told=True)
    print(f"\nother: picks the value told to its own session on {100 * other_told:.0f}% of the questions where it is "
          f"a candidate and not the asked profile's (chance {100 / CANDIDATES:.0f}%)")
    per_fact = {k: {name: sum(r[k] for r in results[name]) / n for name in results} for k in ASK}
    print("\nper fact:", json.dumps({k: {m: round(v, 2) for m, v in d.items()} for k, d in per_fact.items()}))
    for name, prefix, ttt in (("ntp sgd", "sgd-", SGD), ("ntp rms", "rms-", shipped), ("in-place", "inplace-", shipped)):
        if name not in results:
            continue
        sec = sum(v[0] for s, v in ab.COST.items() if s.startswith(prefix))
        chunks = sum(v[1] for s, v in ab.COST.items() if s.startswith(prefix)) / len(ttt["ttt_layers"])
        print(f"update cost, {name}: {1e3 * sec / max(chunks, 1):.0f} ms per chunk ({chunks:.0f} chunks)")
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "summary": summary, "per_fact": per_fact,
                                                  "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
