"""Holography-aided phase retrieval (HAPRE; Battistelli et al., Optica 11, 234 (2024)): pure algorithms."""
