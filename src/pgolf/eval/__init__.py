"""pgolf.eval"""
