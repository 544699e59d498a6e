"""The form's sample-prompt text box: the schema's ``sample_prompts`` is a file, so the text goes to a
prompt file, written where the kohya_ss import writes kohya_ss' prompt text
(:func:`library.gui.kohya_convert.gui_prompt_file`: ``output_dir/sample/prompt.txt``, else
``<config stem>_prompts.txt`` beside the saved config) by the same code
(:meth:`library.gui.kohya_import.KohyaImport.write_prompt_file`). No gradio here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from library.errors import UserError
from library.gui.kohya_convert import gui_prompt_file
from library.gui.kohya_import import KohyaImport

#: prompt files larger than this are not shown in the text box (a prompt file is a few kB)
MAX_SHOWN_BYTES = 256 * 1024


def current_text(path: str | None) -> str | None:
    """The text of the prompt file ``path`` (None: no such readable .txt file, or too big to show)."""
    path = (path or "").strip()
    if not path or Path(path).suffix.lower() != ".txt":
        return None
    file = Path(path).expanduser()
    try:
        if not file.is_file() or file.stat().st_size > MAX_SHOWN_BYTES:
            return None
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def write_prompts(
    text: str,
    output_dir: str | None,
    current: str | None,
    config_path: str | None = None,
    check_path: Callable[[str], None] | None = None,
) -> Path | None:
    """Write the prompt ``text`` to its file and return the path (for ``sample_prompts``); None when there is
    nothing to write (an empty box, or the text the ``current`` prompt file already holds).

    ``check_path`` refuses a file outside the GUI's allowed folders (raises ``UserError``). Raises
    ``UserError`` when neither ``output_dir`` nor ``config_path`` says where the file goes."""
    if not (text or "").strip():
        return None
    if current_text(current) is not None and current_text(current).rstrip("\n") == text.rstrip("\n"):
        return None
    output_dir = (output_dir or "").strip()
    config_path = (config_path or "").strip()
    if not output_dir and not config_path:
        raise UserError(
            "the sample prompts need a file: set output_dir (they go to output_dir/sample/prompt.txt) or "
            "save the config first (they go beside it)."
        )
    result = KohyaImport(values={"output_dir": output_dir}, sample_prompts_text=text)
    target = gui_prompt_file(result, config_path or "prompts.toml")
    if check_path is not None:
        check_path(str(target))
    return result.write_prompt_file(target)
