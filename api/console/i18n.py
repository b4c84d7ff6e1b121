"""Every string the console shows, in French and English: one catalogue, one dict per language
(a unit test checks that both hold the same keys), and how a request's language is chosen."""

from __future__ import annotations

from collections.abc import Mapping

LANGUAGES = ("fr", "en")
DEFAULT = "fr"  # the homes are French
LANG_COOKIE = "veilleuse_lang"

CATALOGUE: dict[str, dict[str, str]] = {
    "en": {
        "app.title": "Veilleuse console",
        "nav.skip": "Skip to content",
        "nav.sites": "Sites",
        "nav.messages": "Messages",
        "nav.alerts": "Alert history",
        "nav.sign_out": "Sign out",
        "nav.language": "Language",
        "nav.signed_in_as": "Signed in as",
        "sign_in.title": "Sign in",
        "sign_in.token": "Access token",
        "sign_in.hint_before": "Paste the token you were given (created by",
        "sign_in.hint_after": ").",
        "sign_in.submit": "Sign in",
        "sign_in.refused": "This token is unknown or revoked.",
        "sign_in.expired": "Your session has ended: sign in again.",
        "sign_in.link_refused": "This sign-in link was already used, has expired or is "
        "unknown: sign in with a token.",
        "sites.title": "Sites",
        "sites.lamps": "lamps",
        "sites.none": "No site has a lamp yet.",
        "board.title": "Site",
        "board.lamps": "Lamps",
        "board.open_alerts": "Open alerts",
        "board.no_open_alerts": "No open alert.",
        "board.live": "Live updates",
        "board.live_on": "connected",
        "board.live_off": "not connected (reload the page to refresh)",
        "lamp.lamp": "Lamp",
        "lamp.state": "State",
        "lamp.online": "online",
        "lamp.offline": "offline",
        "lamp.silent_since": "silent since",
        "lamp.never_heard": "no message yet",
        "label.untranslated": "Not translated: the name the system gives it",
        "lamp.last_message": "Last message",
        "lamp.firmware": "Firmware",
        "lamp.open_incidents": "Open incidents",
        "lamp.title": "Lamp",
        "lamp.last_24h": "Last 24 hours (per hour)",
        "lamp.last_7d": "Last 7 days (per day)",
        "lamp.recent_alerts": "Recent alerts",
        "lamp.latest_messages": "Latest messages",
        "lamp.night": "Last night",
        "lamp.night_missing": "The night summary is not available yet.",
        "night.night_of": "Night of",
        "night.covered_minutes": "Minutes covered",
        "night.minutes_in_bed": "Minutes in bed",
        "night.minutes_out_of_bed": "Minutes out of bed",
        "night.bed_exits": "Bed exits",
        "night.bathroom_visits": "Bathroom visits",
        "night.room_exits": "Room exits",
        "night.restlessness_per_hour": "Restlessness (per hour in bed)",
        "night.longest_still_minutes": "Longest still stretch (minutes)",
        "night.latest_return_to_bed_local": "Latest return to bed",
        "lamp.live_unavailable": "The current hour is not shown: ",
        "figure.active_minutes": "Activity (minutes active)",
        "figure.minutes_in_bed": "Time in bed (minutes)",
        "figure.minutes_absent": "Time out of the room (minutes)",
        "figure.temperature_mean": "Temperature (°C, mean)",
        "figure.messages": "Message rate (messages)",
        "chart.no_data": "No figures for this period.",
        "alert.title": "Alert",
        "alert.kind": "Kind",
        "alert.severity": "Severity",
        "alert.state": "State",
        "alert.lamp": "Lamp",
        "alert.site": "Site",
        "alert.started": "Started",
        "alert.age": "Age",
        "alert.timeline": "Timeline",
        "alert.by": "by",
        "alert.acknowledge": "Acknowledge",
        "alert.acknowledged_by": "Acknowledged by",
        "alert.messages_around": "The lamp's messages around the incident",
        "alert.details": "Details",
        "state.raised": "raised",
        "state.notified": "notified",
        "state.escalated": "escalated",
        "state.acknowledged": "acknowledged",
        "state.resolved": "resolved",
        "kind.fall": "Fall",
        "kind.fall_recovered": "Fall, recovered",
        "kind.help_requested": "Help requested",
        "kind.environment": "Room environment",
        "kind.lamp_offline": "Lamp offline",
        "kind.inactivity": "Inactivity",
        "severity.critical": "critical",
        "severity.warning": "warning",
        "severity.info": "info",
        "step.raised": "Raised",
        "step.notified": "Notified",
        "step.renotified": "Notified again",
        "step.escalated": "Escalated",
        "step.acknowledged": "Acknowledged",
        "step.resolved": "Resolved",
        "step.closed": "Closed",
        "messages.title": "Messages",
        "messages.time": "Time",
        "messages.type": "Type",
        "messages.payload": "Payload",
        "messages.none": "No message matches.",
        "filter.lamp": "Lamp",
        "filter.site": "Site",
        "filter.type": "Type",
        "filter.kind": "Kind",
        "filter.state": "State",
        "filter.any": "any",
        "filter.from": "From (UTC)",
        "filter.to": "To (UTC)",
        "filter.q": "Words",
        "filter.submit": "Search",
        "filter.next": "Next page",
        "alerts.title": "Alert history",
        "alerts.csv": "Export as CSV",
        "alerts.none": "No alert matches.",
        "error.title": "Something is wrong",
        "error.back": "Back to the console",
        "error.csrf": "This form has expired or did not come from this console: reload the page.",
        "error.not_found": "Not found.",
        "error.forbidden": "You may not do this.",
        "error.unavailable": "A service is not answering; try again in a moment.",
        "ago.minutes": "min",
        "ago.hours": "h",
        "ago.days": "d",
    },
    "fr": {
        "app.title": "Console Veilleuse",
        "nav.skip": "Aller au contenu",
        "nav.sites": "Établissements",
        "nav.messages": "Messages",
        "nav.alerts": "Historique des alertes",
        "nav.sign_out": "Se déconnecter",
        "nav.language": "Langue",
        "nav.signed_in_as": "Connecté en tant que",
        "sign_in.title": "Connexion",
        "sign_in.token": "Jeton d'accès",
        "sign_in.hint_before": "Collez le jeton qui vous a été remis (créé par",
        "sign_in.hint_after": ").",
        "sign_in.submit": "Se connecter",
        "sign_in.refused": "Ce jeton est inconnu ou révoqué.",
        "sign_in.expired": "Votre session a pris fin : reconnectez-vous.",
        "sign_in.link_refused": "Ce lien de connexion a déjà servi, a expiré ou est inconnu : "
        "connectez-vous avec un jeton.",
        "sites.title": "Établissements",
        "sites.lamps": "lampes",
        "sites.none": "Aucun établissement n'a encore de lampe.",
        "board.title": "Établissement",
        "board.lamps": "Lampes",
        "board.open_alerts": "Alertes en cours",
        "board.no_open_alerts": "Aucune alerte en cours.",
        "board.live": "Mises à jour en direct",
        "board.live_on": "connecté",
        "board.live_off": "non connecté (rechargez la page pour actualiser)",
        "lamp.lamp": "Lampe",
        "lamp.state": "État",
        "lamp.online": "en ligne",
        "lamp.offline": "hors ligne",
        "lamp.silent_since": "silencieuse depuis",
        "lamp.never_heard": "aucun message encore",
        "label.untranslated": "Non traduit : le nom que lui donne le système",
        "lamp.last_message": "Dernier message",
        "lamp.firmware": "Micrologiciel",
        "lamp.open_incidents": "Incidents en cours",
        "lamp.title": "Lampe",
        "lamp.last_24h": "Dernières 24 heures (par heure)",
        "lamp.last_7d": "7 derniers jours (par jour)",
        "lamp.recent_alerts": "Alertes récentes",
        "lamp.latest_messages": "Derniers messages",
        "lamp.night": "La nuit dernière",
        "lamp.night_missing": "Le bilan de la nuit n'est pas encore disponible.",
        "night.night_of": "Nuit du",
        "night.covered_minutes": "Minutes couvertes",
        "night.minutes_in_bed": "Minutes au lit",
        "night.minutes_out_of_bed": "Minutes hors du lit",
        "night.bed_exits": "Sorties du lit",
        "night.bathroom_visits": "Passages à la salle de bain",
        "night.room_exits": "Sorties de la chambre",
        "night.restlessness_per_hour": "Agitation (par heure au lit)",
        "night.longest_still_minutes": "Plus longue immobilité (minutes)",
        "night.latest_return_to_bed_local": "Dernier retour au lit",
        "lamp.live_unavailable": "L'heure en cours n'est pas affichée : ",
        "figure.active_minutes": "Activité (minutes actives)",
        "figure.minutes_in_bed": "Temps au lit (minutes)",
        "figure.minutes_absent": "Temps hors de la chambre (minutes)",
        "figure.temperature_mean": "Température (°C, moyenne)",
        "figure.messages": "Débit de messages (messages)",
        "chart.no_data": "Aucun chiffre pour cette période.",
        "alert.title": "Alerte",
        "alert.kind": "Type",
        "alert.severity": "Gravité",
        "alert.state": "État",
        "alert.lamp": "Lampe",
        "alert.site": "Établissement",
        "alert.started": "Début",
        "alert.age": "Depuis",
        "alert.timeline": "Chronologie",
        "alert.by": "par",
        "alert.acknowledge": "Prendre en charge",
        "alert.acknowledged_by": "Prise en charge par",
        "alert.messages_around": "Les messages de la lampe autour de l'incident",
        "alert.details": "Détails",
        "state.raised": "levée",
        "state.notified": "notifiée",
        "state.escalated": "escaladée",
        "state.acknowledged": "prise en charge",
        "state.resolved": "résolue",
        "kind.fall": "Chute",
        "kind.fall_recovered": "Chute, relevé(e)",
        "kind.help_requested": "Appel à l'aide",
        "kind.environment": "Environnement de la chambre",
        "kind.lamp_offline": "Lampe hors ligne",
        "kind.inactivity": "Inactivité",
        "severity.critical": "critique",
        "severity.warning": "avertissement",
        "severity.info": "information",
        "step.raised": "Levée",
        "step.notified": "Notifiée",
        "step.renotified": "Notifiée à nouveau",
        "step.escalated": "Escaladée",
        "step.acknowledged": "Prise en charge",
        "step.resolved": "Résolue",
        "step.closed": "Close",
        "messages.title": "Messages",
        "messages.time": "Heure",
        "messages.type": "Type",
        "messages.payload": "Contenu",
        "messages.none": "Aucun message ne correspond.",
        "filter.lamp": "Lampe",
        "filter.site": "Établissement",
        "filter.type": "Type",
        "filter.kind": "Type d'alerte",
        "filter.state": "État",
        "filter.any": "tous",
        "filter.from": "Depuis (UTC)",
        "filter.to": "Jusqu'à (UTC)",
        "filter.q": "Mots",
        "filter.submit": "Rechercher",
        "filter.next": "Page suivante",
        "alerts.title": "Historique des alertes",
        "alerts.csv": "Exporter en CSV",
        "alerts.none": "Aucune alerte ne correspond.",
        "error.title": "Un problème est survenu",
        "error.back": "Retour à la console",
        "error.csrf": "Ce formulaire a expiré ou ne vient pas de cette console : "
        "rechargez la page.",
        "error.not_found": "Introuvable.",
        "error.forbidden": "Vous n'avez pas le droit de faire ceci.",
        "error.unavailable": "Un service ne répond pas ; réessayez dans un instant.",
        "ago.minutes": "min",
        "ago.hours": "h",
        "ago.days": "j",
    },
}


def translate(lang: str, key: str) -> str:
    """The string ``key`` in ``lang``; the key itself when missing (visible, never a crash)."""
    return CATALOGUE.get(lang, CATALOGUE[DEFAULT]).get(key, key)


def label(lang: str, prefix: str, value: str) -> str:
    """A value's name in ``lang`` (``kind.fall``), or the value itself when the catalogue has
    none (a kind added since is shown by its own name)."""
    return CATALOGUE.get(lang, CATALOGUE[DEFAULT]).get(f"{prefix}.{value}", value)


def known(lang: str, prefix: str, value: str) -> bool:
    """Whether the catalogue names ``value`` (a kind, severity, state or step) in ``lang``."""
    return f"{prefix}.{value}" in CATALOGUE.get(lang, CATALOGUE[DEFAULT])


def choose(query_lang: str | None, cookie: str | None, accept_language: str | None) -> str:
    """``?lang=`` first, then the remembered choice, then the browser's preference by weight."""
    for explicit in (query_lang, cookie):
        if explicit in LANGUAGES:
            return explicit
    return from_accept_language(accept_language or "")


def from_accept_language(header: str) -> str:
    weighted: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and quality > 0:
            weighted.append((-quality, position, primary))
    return min(weighted)[2] if weighted else DEFAULT


def missing_keys(catalogue: Mapping[str, Mapping[str, str]] = CATALOGUE) -> dict[str, set[str]]:
    """Per language, the keys another language has and it lacks."""
    every = set().union(*(set(strings) for strings in catalogue.values()))
    return {lang: every - set(strings) for lang, strings in catalogue.items()}
