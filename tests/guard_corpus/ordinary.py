"""Ordinary analysis code, as an LM writes it in a dspy.RLM step. Never executed here.

Categories: text, regex, json, collections, math, datetime, itertools, dataclasses, classes, getattr, threads,
formatting, comprehensions, sorting, submit, stdlib, control.
"""

# ruff: noqa: E501  (data: snippets are kept on one line, as the LM wrote them)
from __future__ import annotations

ORDINARY: list[tuple[str, str]] = [
    ("text", "words = text.split()\nprint(len(words), 'words')\nprint(words[:20])"),
    ("text", "lines = context.splitlines()\nprint(len(lines))\nfor line in lines[:5]:\n    print(repr(line))"),
    (
        "text",
        "table = str.maketrans('', '', '.,;:!?')\nclean = text.lower().translate(table)\nprint(clean[:200])",
    ),
    (
        "text",
        "chunks = [text[i:i + 4000] for i in range(0, len(text), 4000)]\n"
        "answers = llm_query_batched([f'List the people named in:\\n{c}' for c in chunks])\n"
        "print(answers[:2])",
    ),
    ("text", "import textwrap\nprint(textwrap.shorten(text, width=120, placeholder=' ...'))"),
    (
        "text",
        "import difflib\nratio = difflib.SequenceMatcher(None, a, b).ratio()\nprint(f'similarity: {ratio:.2%}')",
    ),
    ("text", "import unicodedata\nnorm = unicodedata.normalize('NFKC', text)\nprint(norm == text)"),
    ("regex", "import re\nemails = re.findall(r'[\\w.+-]+@[\\w-]+\\.[\\w.]+', text)\nprint(sorted(set(emails)))"),
    (
        "regex",
        "import re\n"
        "pattern = re.compile(r'^(?P<date>\\d{4}-\\d{2}-\\d{2}) (?P<level>\\w+): (?P<msg>.*)$', re.M)\n"
        "rows = [m.groupdict() for m in pattern.finditer(log)]\n"
        "print(len(rows), rows[:3])",
    ),
    ("regex", "import re\nprint(re.sub(r'\\s+', ' ', text).strip()[:300])"),
    ("regex", "import re\nfor m in re.finditer(r'TODO|FIXME', source):\n    print(m.start(), m.group())"),
    ("json", "import json\ndata = json.loads(payload)\nprint(type(data).__name__, list(data)[:10])"),
    ("json", "import json\nprint(json.dumps(results, indent=2, sort_keys=True)[:1000])"),
    (
        "json",
        "import json\n"
        "records = [json.loads(line) for line in jsonl.splitlines() if line.strip()]\n"
        "print(records[0].keys())",
    ),
    (
        "collections",
        "from collections import Counter\n"
        "import re\n"
        "counts = Counter(re.findall(r'\\w+', text.lower()))\n"
        "print(counts.most_common(10))",
    ),
    (
        "collections",
        "from collections import defaultdict\n"
        "by_author = defaultdict(list)\n"
        "for rec in records:\n"
        "    by_author[rec['author']].append(rec['title'])\n"
        "print(dict(by_author))",
    ),
    ("collections", "from collections import deque\nlast = deque(lines, maxlen=5)\nprint(list(last))"),
    (
        "collections",
        "from collections import namedtuple\n"
        "Row = namedtuple('Row', 'name score')\n"
        "rows = [Row(n, s) for n, s in pairs]\n"
        "print([r._asdict() for r in rows[:3]])",
    ),
    ("math", "import math\nprint(math.sqrt(sum(x * x for x in values)), math.log10(len(values)))"),
    (
        "math",
        "import statistics\nprint(statistics.mean(scores), statistics.median(scores), statistics.stdev(scores))",
    ),
    ("math", "from decimal import Decimal\ntotal = sum(Decimal(p) for p in prices)\nprint(total)"),
    ("math", "import random\nrandom.seed(0)\nsample = random.sample(items, k=min(5, len(items)))\nprint(sample)"),
    (
        "datetime",
        "from datetime import datetime, timedelta\n"
        "dates = [datetime.strptime(d, '%Y-%m-%d') for d in raw_dates]\n"
        "span = max(dates) - min(dates)\n"
        "print(span.days, span > timedelta(days=30))",
    ),
    ("datetime", "import datetime\nprint(datetime.date(2024, 1, 1).isoformat(), datetime.datetime.now().year)"),
    ("datetime", "import time\nt0 = time.perf_counter()\nn = sum(range(10**6))\nprint(n, time.perf_counter() - t0)"),
    (
        "itertools",
        "import itertools\n"
        "for key, group in itertools.groupby(sorted(words, key=len), key=len):\n"
        "    print(key, len(list(group)))",
    ),
    (
        "itertools",
        "from itertools import combinations, chain\nprint(list(combinations('abcd', 2)))\nprint(list(chain([1], [2])))",
    ),
    (
        "dataclasses",
        "from dataclasses import dataclass, asdict, field\n"
        "@dataclass\n"
        "class Item:\n"
        "    name: str\n"
        "    tags: list[str] = field(default_factory=list)\n"
        "items = [Item('a', ['x']), Item('b')]\n"
        "print([asdict(i) for i in items])",
    ),
    (
        "dataclasses",
        "from dataclasses import dataclass, fields\n"
        "@dataclass\n"
        "class Rec:\n"
        "    id: int\n"
        "    title: str\n"
        "rec = Rec(1, 'x')\n"
        "for f in fields(rec):\n"
        "    print(f.name, getattr(rec, f.name))",
    ),
    (
        "classes",
        "class Finding:\n"
        "    def __init__(self, kind, line):\n"
        "        self.kind = kind\n"
        "        self.line = line\n"
        "    def __repr__(self):\n"
        "        return f'{self.__class__.__name__}(kind={self.kind!r}, line={self.line})'\n"
        "print(Finding('todo', 3))",
    ),
    (
        "classes",
        "class Point:\n"
        "    def __init__(self, x, y):\n"
        "        self.x, self.y = x, y\n"
        "p = Point(1, 2)\n"
        "print(p.__dict__)",
    ),
    (
        "classes",
        "class Base:\n"
        "    def __init__(self, name):\n"
        "        self.name = name\n"
        "class Child(Base):\n"
        "    def __init__(self, name, n):\n"
        "        super().__init__(name)\n"
        "        self._n = n\n"
        "    def __len__(self):\n"
        "        return self._n\n"
        "print(len(Child('c', 3)))",
    ),
    (
        "classes",
        "import functools\n"
        "@functools.total_ordering\n"
        "class Version:\n"
        "    def __init__(self, s):\n"
        "        self.parts = tuple(int(p) for p in s.split('.'))\n"
        "    def __eq__(self, other):\n"
        "        return self.parts == other.parts\n"
        "    def __lt__(self, other):\n"
        "        return self.parts < other.parts\n"
        "print(sorted(Version(v) for v in ['1.2', '1.10', '1.3'])[0].parts)",
    ),
    (
        "classes",
        "class Timer:\n"
        "    def __enter__(self):\n"
        "        return self\n"
        "    def __exit__(self, *exc):\n"
        "        return False\n"
        "with Timer() as t:\n"
        "    print(type(t).__name__)",
    ),
    (
        "classes",
        "class Config:\n"
        "    def __init__(self, **options):\n"
        "        for key, value in options.items():\n"
        "            setattr(self, key, value)\n"
        "cfg = Config(model='x', depth=2)\n"
        "print(cfg.depth)",
    ),
    (
        "getattr",
        "fields = ['name', 'age', 'city']\nfor rec in people:\n    print({f: getattr(rec, f) for f in fields})",
    ),
    ("getattr", "for field in ('title', 'year'):\n    print(field, getattr(movie, field, None))"),
    ("getattr", "print(getattr(obj, 'name', 'unknown'), hasattr(obj, 'items'))"),
    (
        "getattr",
        "def describe(rec, names):\n"
        "    return ', '.join(f'{n}={getattr(rec, n)!r}' for n in names)\n"
        "print(describe(row, ['id', 'status']))",
    ),
    (
        "threads",
        "from concurrent.futures import ThreadPoolExecutor\n"
        "with ThreadPoolExecutor(max_workers=8) as ex:\n"
        "    summaries = list(ex.map(lambda c: llm_query(f'Summarise:\\n{c}'), chunks))\n"
        "print(len(summaries))",
    ),
    (
        "threads",
        "import concurrent.futures\n"
        "with concurrent.futures.ThreadPoolExecutor() as pool:\n"
        "    futures = {pool.submit(llm_query, q): q for q in questions}\n"
        "    for fut in concurrent.futures.as_completed(futures):\n"
        "        print(futures[fut], fut.result()[:80])",
    ),
    (
        "formatting",
        "total = sum(amounts)\nprint(f'{len(amounts)} rows, total {total:,.2f}, mean {total / len(amounts):.3f}')",
    ),
    (
        "formatting",
        "template = '{name}: {count} hits'\nfor name, count in counts.items():\n    print(template.format(name=name, count=count))",
    ),
    ("formatting", "print('{:>10} | {:<5}'.format('key', 'val'))\nprint('%s has %d items' % ('cart', 3))"),
    (
        "comprehensions",
        "lengths = {w: len(w) for w in set(words)}\nlong = [w for w in words if len(w) > 8]\nprint(len(lengths), long[:5])",
    ),
    (
        "comprehensions",
        "matrix = [[i * j for j in range(4)] for i in range(4)]\nflat = [x for row in matrix for x in row if x]\nprint(flat)",
    ),
    ("comprehensions", "if (n := len(items)) > 10:\n    print(f'{n} items, showing 10')\nprint(items[:10])"),
    (
        "sorting",
        "top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]\nfor word, n in top:\n    print(f'{word:<15}{n}')",
    ),
    ("sorting", "from operator import itemgetter\nrows.sort(key=itemgetter('score'), reverse=True)\nprint(rows[:3])"),
    (
        "sorting",
        "import heapq\nprint(heapq.nlargest(3, scores))\nimport bisect\nprint(bisect.bisect_left(sorted(scores), 50))",
    ),
    ("submit", "SUBMIT(answer=str(len(hits)))"),
    ("submit", "SUBMIT(todo=counts['TODO'], fixme=counts['FIXME'], summary=summary)"),
    ("submit", "print(answer)\nSUBMIT(answer=answer.strip())"),
    (
        "stdlib",
        "import csv, io\n"
        "reader = csv.DictReader(io.StringIO(csv_text))\n"
        "rows = list(reader)\n"
        "print(len(rows), reader.fieldnames)",
    ),
    ("stdlib", "import hashlib\nseen = {hashlib.sha256(p.encode()).hexdigest() for p in paragraphs}\nprint(len(seen))"),
    (
        "stdlib",
        "from urllib.parse import urlparse\ndomains = {urlparse(u).netloc for u in urls}\nprint(sorted(domains))",
    ),
    ("stdlib", "import ast\nvalues = ast.literal_eval(raw_list)\nprint(len(values))"),
    ("stdlib", "import base64\nprint(base64.b64decode(blob).decode('utf-8')[:200])"),
    ("stdlib", "from enum import Enum\nclass Level(Enum):\n    LOW = 1\n    HIGH = 2\nprint([l.name for l in Level])"),
    (
        "stdlib",
        "from typing import Optional\ndef first(xs: list[str]) -> Optional[str]:\n    return xs[0] if xs else None\nprint(first(words))",
    ),
    ("stdlib", "import copy\nbackup = copy.deepcopy(data)\nbackup['x'] = 1\nprint(data.get('x'))"),
    (
        "stdlib",
        "from functools import reduce, lru_cache\n@lru_cache(maxsize=None)\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nprint(fib(30), reduce(lambda a, b: a * b, range(1, 6)))",
    ),
    ("stdlib", "import pprint\npprint.pprint(data, width=100)"),
    (
        "control",
        "results = {}\n"
        "for i, q in enumerate(questions):\n"
        "    try:\n"
        "        results[i] = int(llm_query(q).strip())\n"
        "    except ValueError:\n"
        "        results[i] = None\n"
        "print(results)",
    ),
    (
        "control",
        "def parse(line):\n"
        "    key, _, value = line.partition('=')\n"
        "    return key.strip(), value.strip()\n"
        "pairs = dict(parse(l) for l in lines if '=' in l)\n"
        "print(pairs)",
    ),
    (
        "control",
        "match record:\n"
        "    case {'type': 'user', 'name': name}:\n"
        "        print('user', name)\n"
        "    case {'type': kind}:\n"
        "        print('other', kind)\n"
        "    case _:\n"
        "        print('?')",
    ),
    (
        "control",
        "def walk(node, depth=0):\n"
        "    yield depth, node['name']\n"
        "    for child in node.get('children', []):\n"
        "        yield from walk(child, depth + 1)\n"
        "for d, n in walk(tree):\n"
        "    print('  ' * d + n)",
    ),
    (
        "control",
        "print(*[f'{i}: {x}' for i, x in enumerate(items[:5])], sep='\\n')\nprint(isinstance(items, list), type(items).__name__)",
    ),
]
