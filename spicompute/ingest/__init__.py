"""Ingest"""
