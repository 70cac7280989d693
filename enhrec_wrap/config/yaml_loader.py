"""The config file's YAML (config/__init__.py): PyYAML's safe loader, with duplicate keys and deep nesting
refused, and its errors as one line naming the file, line and column.

A module of its own so that only a parse imports PyYAML (9 to 12 ms and 0.9 MB of a session's
start, its reader compiling a regular expression of all of Unicode): a session whose file was
parsed before takes what it said from config/cache.py instead.
"""

import yaml

from enhrec_wrap.errors import EnhrecError

# A teleport.yaml is 6 levels deep; PyYAML builds nodes recursively and a file nested 100,000
# deep would end in a RecursionError, so anything deeper than this is refused first.
MAX_YAML_DEPTH = 50
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: with two `enabled:` lines, which one wins would
    be a guess (PyYAML silently keeps the last; Teleport's strict parser refuses them too)."""

    _depth = 0

    def compose_node(self, parent, index):
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_YAML_DEPTH} levels deep: a config is a few "
                "levels of sections and keys", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            ident = (key_node.tag, key_node.value)
            if ident in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_show_key(key_node.value)}", key_node.start_mark)
            seen.add(ident)
        return super().construct_mapping(node, deep)


def load_yaml(path: str, text: str):
    """The document in `text` (read from `path`); EnhrecError (one line) when it is not YAML."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if mark is None:
            raise EnhrecError(f"{path}: not valid YAML: {_one_line(str(e))}") from None
        raise EnhrecError(f"{path}: line {mark.line + 1}, column {mark.column + 1}: "
                          f"{_yaml_problem(e)}") from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        # PyYAML gives the character as a code point for text input, as a str for bytes.
        code = e.character if isinstance(e.character, int) else ord(e.character)
        raise EnhrecError(f"{path}: line {line}: character {code:#x} is not allowed in YAML: "
                          "remove it") from None
    except yaml.YAMLError as e:
        raise EnhrecError(f"{path}: not valid YAML: {_one_line(str(e))}") from None


def _yaml_problem(e: yaml.MarkedYAMLError) -> str:
    problem = _one_line(e.problem or e.context or "invalid YAML")
    # The context often points at the real culprit, e.g. the key missing its ':' a line above.
    if e.problem and e.context and e.context_mark is not None:
        problem += f" ({_one_line(e.context)} at line {e.context_mark.line + 1})"
    return problem


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _show_key(text: str) -> str:
    """A key (a scalar node's text) quoted as config.show_value quotes a string."""
    import json   # for a mistake only
    return json.dumps(text if len(text) <= 40 else text[:40] + "...")
