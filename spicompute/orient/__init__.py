"""Orientation"""
