"""Language codes: the ISO-639-1 table, and the languages each engine transcribes.

``session.update`` names a language by its two-letter ISO-639-1 code, as vLLM's newest
Realtime clients do. The codec refuses a code that is not in the standard (``unknown_language``);
an engine refuses a real code it does not speak (``unsupported_language``), naming the ones it
does. Names are English and only for messages and the page's language choice.
"""

from __future__ import annotations

_TABLE = """
aa Afar|ab Abkhazian|ae Avestan|af Afrikaans|ak Akan|am Amharic|an Aragonese|ar Arabic|
as Assamese|av Avaric|ay Aymara|az Azerbaijani|ba Bashkir|be Belarusian|bg Bulgarian|
bi Bislama|bm Bambara|bn Bengali|bo Tibetan|br Breton|bs Bosnian|ca Catalan|ce Chechen|
ch Chamorro|co Corsican|cr Cree|cs Czech|cu Church Slavic|cv Chuvash|cy Welsh|da Danish|
de German|dv Divehi|dz Dzongkha|ee Ewe|el Greek|en English|eo Esperanto|es Spanish|
et Estonian|eu Basque|fa Persian|ff Fulah|fi Finnish|fj Fijian|fo Faroese|fr French|
fy Western Frisian|ga Irish|gd Scottish Gaelic|gl Galician|gn Guarani|gu Gujarati|gv Manx|
ha Hausa|he Hebrew|hi Hindi|ho Hiri Motu|hr Croatian|ht Haitian|hu Hungarian|hy Armenian|
hz Herero|ia Interlingua|id Indonesian|ie Interlingue|ig Igbo|ii Sichuan Yi|ik Inupiaq|
io Ido|is Icelandic|it Italian|iu Inuktitut|ja Japanese|jv Javanese|ka Georgian|ki Kikuyu|
kg Kongo|kj Kuanyama|kk Kazakh|kl Kalaallisut|km Khmer|kn Kannada|ko Korean|kr Kanuri|
ks Kashmiri|ku Kurdish|kv Komi|kw Cornish|ky Kyrgyz|la Latin|lb Luxembourgish|lg Ganda|
li Limburgish|ln Lingala|lo Lao|lt Lithuanian|lu Luba-Katanga|lv Latvian|mg Malagasy|
mh Marshallese|mi Maori|mk Macedonian|ml Malayalam|mn Mongolian|mr Marathi|ms Malay|
mt Maltese|my Burmese|na Nauru|nb Norwegian Bokmål|nd North Ndebele|ne Nepali|ng Ndonga|
nl Dutch|nn Norwegian Nynorsk|no Norwegian|nr South Ndebele|nv Navajo|ny Chichewa|
oc Occitan|oj Ojibwa|om Oromo|or Oriya|os Ossetian|pa Punjabi|pi Pali|pl Polish|ps Pashto|
pt Portuguese|qu Quechua|rm Romansh|rn Rundi|ro Romanian|ru Russian|rw Kinyarwanda|
sa Sanskrit|sc Sardinian|sd Sindhi|se Northern Sami|sg Sango|si Sinhala|sk Slovak|
sl Slovenian|sm Samoan|sn Shona|so Somali|sq Albanian|sr Serbian|ss Swati|st Southern Sotho|
su Sundanese|sv Swedish|sw Swahili|ta Tamil|te Telugu|tg Tajik|th Thai|ti Tigrinya|
tk Turkmen|tl Tagalog|tn Tswana|to Tonga|tr Turkish|ts Tsonga|tt Tatar|tw Twi|ty Tahitian|
ug Uyghur|uk Ukrainian|ur Urdu|uz Uzbek|ve Venda|vi Vietnamese|vo Volapük|wa Walloon|
wo Wolof|xh Xhosa|yi Yiddish|yo Yoruba|za Zhuang|zh Chinese|zu Zulu
"""

ISO_639_1: dict[str, str] = dict(
    entry.strip().split(" ", 1) for entry in _TABLE.replace("\n", "").split("|")
)
"""Every ISO-639-1 code (183), with its English name."""

VOXTRAL_REALTIME_LANGUAGES: tuple[str, ...] = (
    "en", "fr", "es", "de", "ru", "zh", "ja", "it", "pt", "nl", "ar", "hi", "ko",
)  # fmt: skip
"""The 13 languages of Voxtral-Mini-4B-Realtime-2602 (its model card). The model finds the
spoken one itself: vLLM 0.32's realtime path has no way to pin it."""


def option_refusal(
    language: str | None,
    prompt: str | None,
    *,
    languages: tuple[str, ...],
    takes_prompt: bool,
    label: str,
) -> tuple[str, str] | None:
    """(error code, message) when ``label`` cannot honour these options; None when it can.

    Free of engine imports so that the container's bridge can use it next to ``vllm serve``.
    """
    if language is not None and language not in languages:
        if len(languages) == 1:
            supported = f"only {describe(languages)}"
        else:
            supported = f"these {len(languages)} languages: {', '.join(languages)}"
        return (
            "unsupported_language",
            f"{label} does not transcribe {language_name(language)} ({language}); "
            f"it supports {supported}",
        )
    if prompt is not None and not takes_prompt:
        return (
            "prompt_not_supported",
            f"{label} cannot take a prompt (names and terms): send the session without one",
        )
    return None


def language_name(code: str) -> str:
    return ISO_639_1.get(code, code)


def describe(codes: tuple[str, ...] | list[str]) -> str:
    """``"en (English), fr (French)"``: for messages that say what an engine supports."""
    return ", ".join(f"{code} ({language_name(code)})" for code in codes)
