//! Mesa client (work in progress).
