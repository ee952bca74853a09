"""Code structure of the controller package: size of its largest class and function, how many are long, and how
much of it is typed loosely.

Run by hand:  .venv/bin/python bench/structure.py                  (a second or so; stdlib only)
              .venv/bin/python bench/structure.py --root OTHER/controller --readme OTHER/README.md

Measures, from the source alone (ast and tokenize, nothing is imported):
  * largest_class, largest_function: name, file and lines, counted from the `class`/`def` line to the last line
    of the body (decorators excluded); methods and nested functions count as functions, named Class.method;
  * functions_over_50, classes_over_250: how many functions span more than 50 lines, classes more than 250;
  * type_ignores: `# type: ignore` comments;
  * any_in_signatures: parameters and returns whose annotation mentions `Any`, over every function signature;
  * any_on_ports: the same in controller/ports.py, plus the fields of `WebContext` (controller/web/common.py)
    annotated with a type that mentions `Any`;
  * readme_lines: lines of the README (default: the one beside the package).
Each figure but any_on_ports is also given without controller/demo/ (`..._excluding_demo`). Readable lines
first; the LAST line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

TYPE_IGNORE = re.compile(r"#\s*type:\s*ignore")


@dataclass
class Block:
    name: str
    file: str
    lines: int


def mentions_any(annotation: ast.expr | None) -> bool:
    if annotation is None:
        return False
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # a quoted annotation
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return False
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name) and node.id == "Any" or isinstance(node, ast.Attribute) and node.attr == "Any":
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and mentions_any(node):
            return True
    return False


def signature_any(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(p for p in (a.vararg, a.kwarg) if p)]
    return sum(mentions_any(p.annotation) for p in params) + mentions_any(fn.returns)


def span(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1  # lineno is the def/class line, after any decorators


def walk(tree: ast.Module, file: str, classes: list[Block], functions: list[Block]) -> int:
    """Collects the classes and functions of one module; returns its count of Any in signatures."""
    count = 0

    def visit(node: ast.AST, prefix: str) -> None:
        nonlocal count
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                classes.append(Block(prefix + child.name, file, span(child)))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append(Block(prefix + child.name, file, span(child)))
                count += signature_any(child)
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return count


def field_any(tree: ast.Module, class_name: str) -> int:
    return sum(
        mentions_any(item.annotation)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name == class_name
        for item in node.body
        if isinstance(item, ast.AnnAssign)
    )


def type_ignores(source: str) -> int:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return sum(1 for t in tokens if t.type == tokenize.COMMENT and TYPE_IGNORE.search(t.string))


def measure(root: Path, exclude: str | None) -> dict:
    classes: list[Block] = []
    functions: list[Block] = []
    any_sig = ignores = any_ports = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        if exclude and rel.startswith(exclude):
            continue
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        n = walk(tree, rel, classes, functions)
        any_sig += n
        ignores += type_ignores(source)
        if rel == f"{root.name}/ports.py":
            any_ports += n
        if rel == f"{root.name}/web/common.py":
            any_ports += field_any(tree, "WebContext")
    biggest_class = max(classes, key=lambda b: b.lines)
    biggest_function = max(functions, key=lambda b: b.lines)
    return {
        "largest_class": vars(biggest_class),
        "largest_function": vars(biggest_function),
        "functions_over_50": sum(f.lines > 50 for f in functions),
        "classes_over_250": sum(c.lines > 250 for c in classes),
        "type_ignores": ignores,
        "any_in_signatures": any_sig,
        "any_on_ports": any_ports,
        "long_functions": sorted(((f.lines, f.name, f.file) for f in functions if f.lines > 50), reverse=True),
        "long_classes": sorted(((c.lines, c.name, c.file) for c in classes if c.lines > 250), reverse=True),
    }


def main() -> None:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=here / "controller", help="the package (default: controller/)")
    parser.add_argument("--readme", type=Path, help="default: README.md beside the package")
    args = parser.parse_args()
    root = args.root.resolve()
    readme = args.readme or root.parent / "README.md"
    whole = measure(root, None)
    core = measure(root, f"{root.name}/demo/")
    readme_lines = len(readme.read_text(encoding="utf-8").splitlines()) if readme.exists() else None

    print(f"package {root}")
    for label, m in (("whole package", whole), ("without demo/", core)):
        print(f"-- {label}")
        c, f = m["largest_class"], m["largest_function"]
        print(f"largest class     {c['name']} ({c['file']}): {c['lines']} lines")
        print(f"largest function  {f['name']} ({f['file']}): {f['lines']} lines")
        print(f"classes over 250 lines: {m['classes_over_250']}; functions over 50 lines: {m['functions_over_50']}")
        for lines, name, file in m["long_classes"] + m["long_functions"]:
            print(f"  {lines:5d}  {name}  ({file})")
        print(f"type: ignore {m['type_ignores']}; Any in signatures {m['any_in_signatures']}; "
              f"Any on ports {m['any_on_ports']}")  # fmt: skip
    print(f"README lines: {readme_lines}")

    keys = ["largest_class", "largest_function", "functions_over_50", "classes_over_250", "type_ignores",
            "any_in_signatures", "any_on_ports"]  # fmt: skip
    result = {k: whole[k] for k in keys}
    result["readme_lines"] = readme_lines
    result.update({f"{k}_excluding_demo": core[k] for k in keys if k != "any_on_ports"})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
