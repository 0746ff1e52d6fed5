"""`automl review make` / `automl review score` (automl.review): a blinded sheet whose key stays in the
store, and readers scored on known answer tables — accuracy, sensitivity, specificity with Wilson
intervals, per class, and Cohen's kappa between readers. Fast: one augmented run folder per module,
assembled the way `fit` writes it (tests/test_report_html.make_run: tiny images, two synthetic ones a class)."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from automl.review import ANSWERS, KEY, SHEET, cohen_kappa, make, proportion, score, score_text, wilson_interval
from automl.store import Store
from conftest import run_cli
from test_report_html import assert_self_contained, make_run

COUNTS = {"benign": (8, 4), "malignant": (6, 3)}


@pytest.fixture(scope="module")
def review(tmp_path_factory):
    """An augmented run (2 synthetic images a class), one sheet of it with 2 real + 2 synthetic a class,
    a second sheet of the same run, and a run without synthetic images."""
    root = tmp_path_factory.mktemp("review")
    folder, dataset, _ = make_run(root, COUNTS, augment=True)
    store = Store(root / "store")
    plain = make_run(root, COUNTS, run_id="260101-000001-beef")[0]
    sheet = make(folder, store, per_class=2, seed=0, out=root / "sheet")
    other = make(folder, store, per_class=2, seed=1, out=root / "other")
    key = json.loads(sheet.key.read_text())
    return {"root": root, "run": folder, "plain": plain, "store": store, "sheet": sheet, "other": other,
            "key": key, "dataset": dataset}


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fill(review, name: str, answer, *, sheet=None, folder: Path | None = None) -> Path:
    """A copy of the sheet's answers.csv, saved as ``name``.csv, with ``answer(image)`` (an image of the
    key: id, class, kind) in each row's answer column."""
    sheet = sheet or review["sheet"]
    key = {im["id"]: im for im in json.loads(sheet.key.read_text())["images"]}
    path = (folder or review["root"] / "answers") / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = rows_of(sheet.folder / ANSWERS)
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        for row in rows:
            out.writerow({**row, "answer": answer(key[row["id"]])})
    return path


def answer(text: str, image: str, value: str) -> str:
    """``text`` (a CSV) with the answer of ``image`` set to ``value`` (CSV text)."""
    return re.sub(rf"^([^,\n]*,{image},[^,\n]*,).*$", lambda m: m.group(1) + value, text, count=1, flags=re.M)


def perfect(im):
    return im["kind"]


def opposite(im):
    return {"real": "synthetic", "synthetic": "real"}[im["kind"]]


def edit(review, name: str, change) -> Path:
    """A perfect reader's CSV as text, changed by ``change(text) -> text``."""
    path = fill(review, name, perfect)
    path.write_text(change(path.read_text()))
    return path


# --- the sheet ----------------------------------------------------------------------------------------------


def test_make_writes_the_sheet_and_csv_and_keeps_the_key_in_the_store_only(review):
    sheet, key = review["sheet"], review["key"]
    assert sorted(p.name for p in sheet.folder.iterdir()) == [ANSWERS, SHEET]
    assert sheet.key == review["store"].reviews_dir / sheet.id / KEY
    assert key["sheet"] == sheet.id and key["run"] == review["run"].name
    assert sheet.counts == {"benign": {"real": 2, "synthetic": 2}, "malignant": {"real": 2, "synthetic": 2}}
    assert sheet.notes == []
    kinds = [(im["class"], im["kind"]) for im in key["images"]]
    assert sorted(kinds) == sorted([(c, k) for c in COUNTS for k in ("real", "synthetic")] * 2)
    # Each image in the key is what the run saw: real ones are training images of their class (never test
    # images), synthetic ones are the run's generated images, by fingerprint.
    train = {it.fingerprint: it for it in review["dataset"].split("train")}
    classes = review["dataset"].classes
    aug = json.loads((review["run"] / "run.json").read_text())["augment"]
    for im in key["images"]:
        if im["kind"] == "real":
            assert classes[train[im["fingerprint"]].label] == im["class"]
        else:
            assert Path(im["path"]).parent.parent == Path(aug["folder"])
            rec = json.loads(Path(im["path"]).with_suffix(".json").read_text())
            assert rec["fingerprint"] == im["fingerprint"] and rec["class"] == im["class"]
    # The picked synthetic images' sources are not on the sheet while the class has other real images.
    sources = {s["fingerprint"] for im in key["images"] if im["kind"] == "synthetic"
               for s in json.loads(Path(im["path"]).with_suffix(".json").read_text())["sources"]}
    assert not sources & {im["fingerprint"] for im in key["images"] if im["kind"] == "real"}

    rows = rows_of(sheet.folder / ANSWERS)
    assert list(rows[0]) == ["sheet", "id", "class", "answer"]
    assert [r["id"] for r in rows] == [im["id"] for im in key["images"]]
    assert all(r["sheet"] == sheet.id and r["answer"] == "" for r in rows)
    assert [r["class"] for r in rows] == [im["class"] for im in key["images"]]
    assert len({r["id"] for r in rows}) == len(rows) and all(re.fullmatch(r"[0-9a-f]{6}", r["id"]) for r in rows)


def test_the_sheet_reveals_the_kind_nowhere_but_the_key(review):
    sheet, key = review["sheet"], review["key"]
    page = (sheet.folder / SHEET).read_text()
    answers = (sheet.folder / ANSWERS).read_text()
    assert not re.search(r"real|synthetic", answers, re.I)
    head, images = page.split("<section class='images'>")
    assert re.search(r"synthetic", head) and re.search(r"\breal\b", head)  # the instructions say what to answer
    assert not re.search(r"real|synthetic|generat|augment|source|\.png|\.json|tr_\d|0000", images, re.I)
    for im in key["images"]:  # no path, file or fingerprint on the page or in the CSV
        for text in (page, answers):
            assert Path(im["path"]).name not in text and im["fingerprint"] not in text
    # Every image is a PNG of one size, without metadata: nothing in the file tells real from synthetic.
    uris = re.findall(r"<img src='data:image/png;base64,([^']+)' alt='([^']*)'", images)
    assert len(uris) == 8
    for data, alt in uris:
        raw = base64.b64decode(data)
        with Image.open(io.BytesIO(raw)) as im:
            assert (im.format, im.size, im.mode) == ("PNG", (256, 256), "RGB") and not im.info
        assert re.fullmatch(r"image [0-9a-f]{6}, class (benign|malignant)", alt)
    # Shown in the key's (shuffled) order; neither the order nor the ids sort real from synthetic.
    shown = re.findall(r"<b>([0-9a-f]{6})</b>", images)
    assert shown == [im["id"] for im in key["images"]]
    kinds = [im["kind"] for im in key["images"]]
    assert kinds not in (sorted(kinds), sorted(kinds, reverse=True))
    by_id = [im["kind"] for im in sorted(key["images"], key=lambda im: im["id"])]
    assert by_id not in (sorted(kinds), sorted(kinds, reverse=True))
    assert not any((sheet.folder / name).exists() for name in (KEY, "key.csv"))


def test_the_sheet_is_self_contained_and_escapes_its_text(review):
    assert_self_contained((review["sheet"].folder / SHEET).read_text())
    from automl.review import sheet_html

    page = sheet_html("s<1>", [("a'b", "<script>x</script>&", "data:image/png;base64,AAAA")])
    assert "<script>" not in page and "&lt;script&gt;" in page and "s&lt;1&gt;" in page and "a&#x27;b" in page


def test_same_seed_same_sheet_larger_n_adds_and_other_seed_differs(review, tmp_path):
    run, store = review["run"], review["store"]
    again = json.loads(make(run, store, per_class=2, seed=0, out=tmp_path / "again").key.read_text())
    first = review["key"]
    assert again["sheet"] != first["sheet"]
    assert [(i["id"], i["path"]) for i in again["images"]] == [(i["id"], i["path"]) for i in first["images"]]
    one = json.loads(make(run, store, per_class=1, seed=0, out=tmp_path / "one").key.read_text())
    assert {i["path"] for i in one["images"]} <= {i["path"] for i in first["images"]}
    other = json.loads(review["other"].key.read_text())
    assert [i["id"] for i in other["images"]] != [i["id"] for i in first["images"]]


def test_a_class_with_fewer_images_than_asked_gives_what_there_is_and_says_so(review, tmp_path):
    sheet = make(review["run"], review["store"], per_class=3, seed=0, out=tmp_path / "three")
    assert sheet.counts == {"benign": {"real": 3, "synthetic": 2}, "malignant": {"real": 3, "synthetic": 2}}
    assert any("class benign: 2 synthetic image(s), fewer than --per-class 3 (the run has 2)" in n for n in sheet.notes)
    assert "fewer" not in (sheet.folder / SHEET).read_text()  # the notes are the operator's, not the reader's


def test_a_filtered_run_reviews_the_synthetic_images_it_kept(review, tmp_path):
    """A filtered plan (``augment.filter.kept``) trains on some of the images made, not the first ones."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(review["run"], folder)
    record = json.loads((folder / "run.json").read_text())
    record["augment"]["synthetic_per_class"] = {"benign": 1, "malignant": 1}
    record["augment"]["filter"] = {"kept": {"benign": [1], "malignant": [0]}}
    (folder / "run.json").write_text(json.dumps(record))
    key = json.loads(make(folder, review["store"], per_class=2, out=tmp_path / "kept").key.read_text())
    synthetic = sorted((im["class"], Path(im["path"]).name) for im in key["images"] if im["kind"] == "synthetic")
    assert synthetic == [("benign", "000001.png"), ("malignant", "000000.png")]


def test_cli_make_prints_where_everything_is_and_refuses_what_it_cannot_do(review, tmp_path, capsys):
    store = review["store"].root
    code, out, err = run_cli(capsys, "review", "make", review["run"].name, "--per-class", "2", "--store", store,
                             "--out", tmp_path / "cli")
    assert code == 0, err
    sheet_id = re.search(r"wrote review sheet (\S+) of run 260101-000000-abcd: 8 images \(benign: 2 real \+ 2 "
                         r"synthetic, malignant: 2 real \+ 2 synthetic\)", out).group(1)
    assert f"key (keep it from the readers): {store / 'reviews' / sheet_id / KEY}" in out
    assert (tmp_path / "cli" / SHEET).is_file() and (tmp_path / "cli" / ANSWERS).is_file()

    code, out, err = run_cli(capsys, "review", "make", review["run"].name, "--per-class", "2", "--store", store,
                             "--out", tmp_path / "cli")
    assert code == 2 and f"--out {tmp_path / 'cli'} already holds sheet.html and answers.csv" in err
    before = sorted(p.name for p in (review["store"].reviews_dir).iterdir())
    code, out, err = run_cli(capsys, "review", "make", review["plain"].name, "--per-class", "2", "--store", store,
                             "--out", tmp_path / "plain")
    assert code == 2 and "run 260101-000001-beef has no synthetic images" in err and "--augment" in err
    assert not (tmp_path / "plain").exists() and sorted(p.name for p in review["store"].reviews_dir.iterdir()) == before
    code, out, err = run_cli(capsys, "review", "make", "nope", "--per-class", "2", "--store", store)
    assert code == 2 and "no run 'nope'" in err
    code, out, err = run_cli(capsys, "review", "make", review["run"].name, "--per-class", "0", "--store", store)
    assert code == 2 and "--per-class" in err


# --- the numbers --------------------------------------------------------------------------------------------


def test_wilson_intervals_match_hand_computed_values():
    # 8 of 10: p = 0.8, z = 1.96: centre (0.8 + 0.19207) / 1.38415 = 0.71679, half 1.41603 * 0.16001 = 0.22658.
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0  # exactly, not 1 - 1e-16
    assert wilson_interval(8, 8) == pytest.approx((0.6756, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) is None
    assert proportion(3, 4) == {"k": 3, "n": 4, "value": 0.75, "interval": list(wilson_interval(3, 4))}


def test_cohen_kappa_on_known_tables():
    a = ["real"] * 4 + ["synthetic"] * 4
    assert cohen_kappa(a, a)["kappa"] == 1
    assert cohen_kappa(a, a[::-1])["kappa"] == -1
    # A coin-flipper: table [[2, 2], [2, 2]] -> observed 0.5, expected 0.5 * 0.5 + 0.5 * 0.5 = 0.5, kappa 0.
    coin = ["real", "synthetic"] * 4
    assert cohen_kappa(a, coin) == {"n": 8, "observed": 0.5, "expected": 0.5, "kappa": 0.0}
    # One synthetic found, the rest called real: observed 5/8; expected 0.5 * 1/8 + 0.5 * 7/8 = 0.5; kappa 0.25.
    shy = ["real"] * 4 + ["synthetic"] + ["real"] * 3
    assert cohen_kappa(a, shy)["kappa"] == pytest.approx(0.25)
    from sklearn.metrics import cohen_kappa_score

    assert cohen_kappa(a, shy)["kappa"] == pytest.approx(cohen_kappa_score(a, shy))
    assert cohen_kappa(["real"] * 3, ["real"] * 3)["kappa"] is None  # expected agreement 1: undefined
    assert cohen_kappa([], [])["kappa"] is None


def _overall(result, reader):
    return next(r for r in result["readers"] if r["reader"] == reader)


def test_a_perfect_reader_and_a_copy_of_them(review):
    result = score([fill(review, "alice", perfect), fill(review, "alice-copy", perfect)], review["store"])
    alice = _overall(result, "alice")
    s = alice["overall"]
    assert (s["n"], s["tp"], s["fn"], s["tn"], s["fp"]) == (8, 4, 0, 4, 0)
    assert s["accuracy"] == {"k": 8, "n": 8, "value": 1.0, "interval": pytest.approx([0.6756, 1.0], abs=1e-4)}
    assert s["sensitivity"]["value"] == s["specificity"]["value"] == 1.0
    assert s["sensitivity"]["interval"] == pytest.approx([0.5101, 1.0], abs=1e-4)  # 4 of 4
    assert all(c["accuracy"]["value"] == 1.0 and c["n"] == 4 for c in alice["per_class"].values())
    assert result["agreement"] == [{"readers": ["alice", "alice-copy"], "n": 8, "observed": 1.0, "expected": 0.5,
                                    "kappa": 1.0}]
    assert (alice["answered"], alice["missing"]) == (8, 0)


def test_a_reader_who_answers_the_opposite(review):
    result = score([fill(review, "alice", perfect), fill(review, "contrary", opposite)], review["store"])
    s = _overall(result, "contrary")["overall"]
    assert s["accuracy"]["value"] == s["sensitivity"]["value"] == s["specificity"]["value"] == 0.0
    assert s["accuracy"]["interval"] == pytest.approx([0.0, 0.3244], abs=1e-4)  # 0 of 8
    assert result["agreement"][0]["kappa"] == -1.0


def test_a_coin_flipper_against_a_perfect_reader_agrees_by_chance_only(review):
    # Alternate r, s within each kind (ids in sorted order): 2 of 4 real and 2 of 4 synthetic right.
    key = review["key"]["images"]
    flips = {}
    for kind in ("real", "synthetic"):
        for n, im in enumerate(sorted((im for im in key if im["kind"] == kind), key=lambda im: im["id"])):
            flips[im["id"]] = ("real", "synthetic")[n % 2]
    result = score([fill(review, "alice", perfect), fill(review, "coin", lambda im: flips[im["id"]])],
                   review["store"])
    s = _overall(result, "coin")["overall"]
    assert (s["tp"], s["fn"], s["tn"], s["fp"]) == (2, 2, 2, 2)
    assert s["accuracy"]["value"] == 0.5
    assert result["agreement"][0] == {"readers": ["alice", "coin"], "n": 8, "observed": 0.5, "expected": 0.5,
                                      "kappa": 0.0}


def test_per_class_numbers_and_every_pair_of_three_readers(review):
    # Right on every benign image; "real" for every malignant one: 2 of its 4 right (the real ones).
    def lazy(im):
        return im["kind"] if im["class"] == "benign" else "real"

    result = score([fill(review, "alice", perfect), fill(review, "bob", lazy), fill(review, "carol", opposite)],
                   review["store"])
    bob = _overall(result, "bob")
    benign, malignant = bob["per_class"]["benign"], bob["per_class"]["malignant"]
    assert (benign["accuracy"]["k"], benign["accuracy"]["n"], benign["sensitivity"]["value"],
            benign["specificity"]["value"]) == (4, 4, 1.0, 1.0)
    assert (malignant["accuracy"]["value"], malignant["sensitivity"]["k"], malignant["sensitivity"]["n"],
            malignant["specificity"]["k"], malignant["specificity"]["n"]) == (0.5, 0, 2, 2, 2)
    assert malignant["accuracy"]["interval"] == pytest.approx(list(wilson_interval(2, 4)))
    o = bob["overall"]
    assert (o["accuracy"]["k"], o["sensitivity"]["k"], o["sensitivity"]["n"], o["specificity"]["k"]) == (6, 2, 4, 4)
    pairs = {tuple(a["readers"]): a for a in result["agreement"]}
    assert list(pairs) == [("alice", "bob"), ("alice", "carol"), ("bob", "carol")]
    # alice vs bob: agree on 6 of 8; alice 4/4 synthetic, bob 2 synthetic of 8: expected 0.5 * 0.25 + 0.5 * 0.75.
    assert pairs[("alice", "bob")]["kappa"] == pytest.approx((0.75 - 0.5) / 0.5)
    assert pairs[("alice", "carol")]["kappa"] == -1.0
    text = score_text(result)
    assert "bob     malignant  4  0.500 (2/4) [" in text and "alice   bob" in text


def test_answers_accept_any_case_and_r_s_and_a_reader_column(review):
    letters = {"real": " R ", "synthetic": "s"}
    words = {"real": "Real", "synthetic": "SYNTHETIC"}
    path = fill(review, "answers", lambda im: letters[im["kind"]])
    named = fill(review, "other-name", lambda im: words[im["kind"]])
    text = named.read_text().splitlines()
    named.write_text("\n".join([text[0] + ",reader"] + [line + ",dr who" for line in text[1:]]) + "\n")
    result = score([path, named], review["store"])
    assert [r["reader"] for r in result["readers"]] == ["answers", "dr who"]
    assert all(r["overall"]["accuracy"]["value"] == 1.0 for r in result["readers"])


def test_unanswered_rows_are_refused_unless_allowed_then_left_out_and_counted(review, capsys):
    skip = {im["id"] for im in review["key"]["images"][:2]}
    path = fill(review, "tired", lambda im: "" if im["id"] in skip else im["kind"])
    code, out, err = run_cli(capsys, "review", "score", path, "--store", review["store"].root)
    assert code == 2 and f"{path}: 2 row(s) without an answer (line 2, 3)" in err and "--allow-missing" in err
    code, out, err = run_cli(capsys, "review", "score", path, "--store", review["store"].root, "--allow-missing",
                             "--json")
    assert code == 0, err
    reader = json.loads(out)["readers"][0]
    assert (reader["answered"], reader["missing"], reader["overall"]["n"]) == (6, 2, 6)
    code, out, err = run_cli(capsys, "review", "score", path, "--store", review["store"].root, "--allow-missing")
    assert "tired: 2 unanswered image(s) left out" in out
    # A deleted row is an unanswered image too.
    short = edit(review, "short", lambda t: "\n".join(t.splitlines()[:-1]) + "\n")
    code, out, err = run_cli(capsys, "review", "score", short, "--store", review["store"].root)
    assert code == 2 and "1 image(s) of the sheet without a row" in err


def test_cli_score_prints_a_table_and_json(review, capsys):
    a, b = fill(review, "alice", perfect), fill(review, "bob", opposite)
    code, out, err = run_cli(capsys, "review", "score", a, b, "--store", review["store"].root)
    assert code == 0, err
    sheet = review["sheet"]
    assert out.startswith(f"sheet {sheet.id} (run 260101-000000-abcd): 8 images, 2 reader(s); 95 % Wilson intervals")
    assert re.search(r"alice\s+all\s+8\s+1\.000 \(8/8\) \[0\.676, 1\.000\]", out)
    assert re.search(r"bob\s+all\s+8\s+0\.000 \(0/8\) \[0\.000, 0\.324\]", out)
    assert re.search(r"alice\s+bob\s+8\s+0\.000\s+-1\.000", out)
    code, out, err = run_cli(capsys, "review", "score", a, b, "--store", review["store"].root, "--json")
    result = json.loads(out)
    assert result["sheet"] == sheet.id and result["agreement"][0]["kappa"] == -1.0


@pytest.mark.parametrize("case", ["unknown-sheet", "not-a-sheet-id", "unknown-id", "duplicate-id", "bad-answer",
                                  "formula", "no-answer-column", "two-sheets-in-one-file", "two-readers",
                                  "empty", "missing-file", "not-utf8"])
def test_bad_csvs_are_refused_naming_the_file_line_and_fix(review, capsys, case):
    sheet = review["sheet"]
    first = review["key"]["images"][0]["id"]
    second = review["key"]["images"][1]["id"]
    changes = {
        "unknown-sheet": (lambda t: t.replace(sheet.id, "260101-000000-0000"),
                          "sheet 260101-000000-0000 (named in {path}) has no key in the store"),
        "not-a-sheet-id": (lambda t: t.replace(sheet.id, "../../runs"),
                           "{path} line 2: '../../runs' is not a sheet id"),
        "unknown-id": (lambda t: t.replace(first, "abcdef", 1),
                       "{path} line 2: id 'abcdef' is not an image of sheet " + sheet.id),
        "duplicate-id": (lambda t: t.replace(second, first, 1),
                         "{path} line 3: id " + first + " appears again (first on line 2)"),
        "bad-answer": (lambda t: answer(t, first, "maybe"),
                       "{path} line 2: answer 'maybe' for id " + first + "; expected real or synthetic (or r / s"),
        "formula": (lambda t: answer(t, first, '"=HYPERLINK(""http://x"")"'),
                    "{path} line 2: answer '=HYPERLINK(\"http://x\")'"),
        "no-answer-column": (lambda t: t.replace("sheet,id,class,answer", "sheet,id,class,guess"),
                             "{path}: no column answer in its first line (found sheet, id, class, guess)"),
        "two-sheets-in-one-file": (lambda t: t.replace(f"{sheet.id},{second}", f"{review['other'].id},{second}"),
                                   "{path} line 3: sheet '" + review["other"].id + "', but line 2 has '" + sheet.id),
        "two-readers": (lambda t: "\n".join([t.splitlines()[0] + ",reader"] + [
            line + (",ann" if n % 2 else ",ben") for n, line in enumerate(t.splitlines()[1:])]) + "\n",
                        "{path}: its reader column names 2 readers (ann, ben)"),
        "empty": (lambda t: t.splitlines()[0] + "\n", "{path} holds no rows"),
    }
    if case == "missing-file":
        path, message = review["root"] / "answers" / "nobody.csv", "answers file not found: {path}"
    elif case == "not-utf8":
        path = fill(review, case, perfect)
        path.write_bytes(path.read_bytes().replace(b"real", b"r\xe9al", 1))
        message = "{path} line"  # read with its bytes kept, the answer names itself
    else:
        change, message = changes[case]
        path = edit(review, case, change)
    code, out, err = run_cli(capsys, "review", "score", path, "--store", review["store"].root)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and message.format(path=path) in err, err
    assert len(err.strip().splitlines()) == 1


def test_csvs_of_different_sheets_or_one_reader_twice_are_refused(review, capsys):
    a = fill(review, "alice", perfect)
    b = fill(review, "bob", perfect, sheet=review["other"])
    code, out, err = run_cli(capsys, "review", "score", a, b, "--store", review["store"].root)
    assert code == 2 and "the CSVs come from different sheets" in err and f"{b} is sheet {review['other'].id}" in err
    again = fill(review, "alice", perfect, folder=review["root"] / "elsewhere")
    code, out, err = run_cli(capsys, "review", "score", a, again, "--store", review["store"].root)
    assert code == 2 and f"{a} and {again} both name reader 'alice'" in err
    code, out, err = run_cli(capsys, "review", "score", a, "--store", review["root"] / "empty-store")
    assert code == 2 and f"sheet {review['sheet'].id} (named in {a}) has no key in the store" in err
    assert "--store" in err
