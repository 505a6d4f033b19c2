"""ITDR's seven subtasks' texts: their Task Descriptions and Input templates, and the domain nouns.

The texts follow the dataset's instances (``shared/data/itdr-samples``). An Input template holds
two kinds of placeholders: domain words (``{item}``, ``{items}``, ``{past}``, ...) and list slots
(``{history}``, ``{candidates}``, ...). Each slot renders a list of entries with an entry format
(``{index}. {title}``; fields are ``index``, ``rating``, ``text`` and any item field such as
``title`` or ``genres``) joined by a separator, or as a Python list literal when the separator is
None. Every part is overridable: pass your own ``Domain`` or ``TaskTemplate``.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from itdr_batch.tasks import Task


@dataclass(frozen=True)
class Domain:
    """The words ITDR's inputs use for one kind of item."""

    item: str
    items: str
    past: str
    gerund: str
    verb: str
    creators: str
    item_short: str = ""

    def words(self) -> dict[str, str]:
        return {
            "item": self.item,
            "items": self.items,
            "Item": self.item[:1].upper() + self.item[1:],
            "item_short": self.item_short or self.item,
            "past": self.past,
            "gerund": self.gerund,
            "verb": self.verb,
            "creators": self.creators,
        }


DOMAINS = {
    "movie": Domain("movie", "movies", "watched", "watching", "watch", "directors"),
    "anime": Domain("anime", "anime", "watched", "watching", "watch", "studios"),
    "book": Domain("book", "books", "read", "reading", "read", "authors"),
    "product": Domain("product", "products", "purchased", "purchasing", "purchase", "brands"),
    "short_video": Domain(
        "short video", "videos", "watched", "watching", "watch", "creators", item_short="video"
    ),
    "video": Domain("video", "videos", "watched", "watching", "watch", "creators"),
    "game": Domain("game", "games", "played", "playing", "play", "developers"),
    "music": Domain("song", "songs", "listened to", "listening to", "listen to", "artists"),
}


@dataclass(frozen=True)
class ListSpec:
    """How a list slot is written; ``source`` names the data it shows (default: the slot name)."""

    entry: str
    separator: str | None
    source: str | None = None


@dataclass(frozen=True)
class TaskTemplate:
    description: str
    input: str
    lists: Mapping[str, ListSpec] = field(default_factory=dict)


NUMBERED = ListSpec("{index}. {title}", "\n")

TEMPLATES: dict[Task, TaskTemplate] = {
    Task.RP: TaskTemplate(
        description=(
            "The objective of the rating prediction task is to thoroughly explore users' "
            "preferences toward items (e.g., movies, products, music, books, etc.) based on their "
            "historical rating records. By extracting insights from the rating data to identify "
            "the types of items users prefer or dislike, the task aims to accurately predict "
            "users' ratings for new items."
        ),
        input=(
            "A user has {past} and rated the following {items} with ratings: {history}. "
            "Predict his rating for {target}."
        ),
        lists={
            "history": ListSpec("{title} ({rating})", ", "),
            "target": ListSpec("{title}", ", "),
        },
    ),
    Task.TKR: TaskTemplate(
        description=(
            "The primary goal of Top-K recommendation is to select the K items most likely to "
            "attract the user from a candidate set based on their historical behavior or "
            "preferences, and present them in a ranked list."
        ),
        input=(
            "Given a user's {item} {gerund} records in chronological order as follows:\n"
            "{history}\nBased on the {gerund} history, please rank the {item} in the candidate "
            "list by the likelihood of the user {gerund} them next from highest to lowest.\n"
            "Candidate list:\n{candidates}"
        ),
        lists={"history": NUMBERED, "candidates": NUMBERED},
    ),
    Task.CDR: TaskTemplate(
        description=(
            "The goal of cross-domain recommendation is to predict a user's behavior in the "
            "target domain based on their historical behavior in the source domain, thereby "
            "achieving effective utilization of cross-domain information and improving "
            "recommendation performance."
        ),
        input=(
            "A user's {verb} history in the {source_domain} domain is as follows:\n{source},\n"
            "and in the {target_domain} domain is as follows: {history}.\n"
            "Based on this information, please rank the following list of {items} in the "
            "{target_domain} domain in order of the likelihood that the user will {verb} them "
            "next, from highest to lowest. {Item} list:\n{candidates}."
        ),
        lists={"source": NUMBERED, "history": NUMBERED, "candidates": NUMBERED},
    ),
    Task.NIR: TaskTemplate(
        description=(
            "The primary goal of next-item recommendation is to predict the item that a user is "
            "most likely to interact with or be interested in next, based on their historical "
            "behavior sequence (such as clicks, purchases, or views)."
        ),
        input=(
            "Given that a {item} user has {past} the following {items} in chronological order: "
            "{history}, please select the next {item_short} the user is most likely to {verb} "
            "from the candidate list: {candidates}"
        ),
        lists={
            "history": ListSpec("{index}.{title}:{category}", None),
            "candidates": ListSpec("{title}:{category}", None),
        },
    ),
    Task.UAP: TaskTemplate(
        description=(
            "The objective of attribute prediction is to infer implicitly expressed static "
            "attributes (e.g., age, gender, income, education level) from user behavioral data "
            "(e.g., browsing, purchases, social interactions), thereby completing fundamental "
            "dimensions of user profiles to support differentiated recommendation strategies."
        ),
        input=(
            "The user's {item} preferences are as follows:\nHe/She likes {gerund} {history}.\n"
            "Based on the user's {item} preferences, predict his/her {attribute_names}."
        ),
        lists={"history": ListSpec("{title}: {genres}", ", ")},
    ),
    Task.IR: TaskTemplate(
        description=(
            "The objective of interest recognition is to infer and categorize user interests "
            "based on behavioral data, thereby providing interpretable and actionable interest "
            "dimensions for personalized recommendation systems."
        ),
        input=(
            "A user has given the following {item} reviews:\nLiked {items}:\n{liked}\n"
            "Disliked {items}:\n{disliked}\nBased on these reviews, briefly summarize the "
            "user's {gerund} interests, focusing on the types of {items}, styles, and "
            "{creators} the user may prefer."
        ),
        lists={
            "liked": ListSpec("{title}: {text}", "\n"),
            "disliked": ListSpec("{title}: {text}", "\n"),
        },
    ),
    Task.TUI: TaskTemplate(
        description=(
            "The objective of target user identification is to accurately pinpoint the user "
            "groups most likely to exhibit positive feedback (e.g., clicks, purchases, high "
            "ratings) by analyzing the alignment between item characteristics and user "
            "profiles, thereby providing targeted distribution guidance for recommendation "
            "systems."
        ),
        input=(
            "The attributes of the {item} {target} are as follows:\n{attributes},\n"
            "Customers' comments on the {item} are as follows:\n{reviews}\n"
            "Based on the attributes and the reviews, briefly describe which user groups this "
            "{item} is suitable for recommending."
        ),
        lists={
            "target": ListSpec("{title}", ", "),
            "attributes": ListSpec("{attributes}", ", ", source="target"),
            "reviews": ListSpec("{index}. {text}", "\n"),
        },
    ),
}
