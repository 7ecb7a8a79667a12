from collections.abc import Callable
from typing import Any

def unpack_tree(
    data: Any,
    max_depth: int,
    referenced: bytearray,
    resolve: Callable[[int, int], Any],
    routes: tuple[Any, ...],
    max_array_len: int = -1,
) -> tuple[Any] | None: ...
def strided_sources(views: list[Any], entries: list[Any], offsets: list[int], plan: dict[Any, Any]) -> list[Any]: ...
