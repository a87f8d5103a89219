"""Every relative link in README.md and docs/*.md points to a file that exists, every #anchor to a heading."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, 'README.md'), *sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))]
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def prose_lines(path):
    """The lines of a markdown file outside fenced code blocks."""
    inside = False
    with open(path, encoding='utf-8') as f:
        for line in f:
            if line.lstrip().startswith('```'):
                inside = not inside
            elif not inside:
                yield line.rstrip('\n')


def anchors(path):
    """GitHub's anchors of a markdown file's headings: link text kept, lower case, punctuation dropped, spaces to
    hyphens; a repeated heading gets -1, -2, ..."""
    seen, found = {}, set()
    for line in prose_lines(path):
        match = re.match(r'#{1,6}\s+(.*)', line)
        if not match:
            continue
        text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', match.group(1).strip())
        slug = re.sub(r'[^\w\- ]', '', text.lower()).replace(' ', '-')
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f'{slug}-{count}')
    return found


def relative_links(path):
    for number, line in enumerate(prose_lines(path), 1):
        for target in LINK.findall(line):
            if not re.match(r'[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto: ... are not checked here
                yield number, target


def test_the_anchor_rule_matches_githubs():
    import tempfile
    with tempfile.NamedTemporaryFile('w', suffix='.md', delete=False) as f:
        f.write('# Resolution transfer: train at one size, run at others\n## Speed (CPU, from [B.md](B.md))\n'
                '## Speed (CPU, from [B.md](B.md))\n```\n# not a heading\n```\n')
    try:
        assert anchors(f.name) == {'resolution-transfer-train-at-one-size-run-at-others', 'speed-cpu-from-bmd',
                                   'speed-cpu-from-bmd-1'}
    finally:
        os.unlink(f.name)


@pytest.mark.parametrize('page', PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_point_to_files_and_headings_that_exist(page):
    broken = []
    for line, target in relative_links(page):
        file_part, _, anchor = target.partition('#')
        target_path = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part else page
        if not os.path.exists(target_path):
            broken.append(f'line {line}: {target} (no file {os.path.relpath(target_path, ROOT)})')
        elif anchor and (not target_path.endswith('.md') or anchor not in anchors(target_path)):
            broken.append(f'line {line}: {target} (no heading #{anchor} in {os.path.relpath(target_path, ROOT)})')
    assert not broken, '\n'.join(broken)


def test_the_pages_link_to_each_other():
    """The README links every docs page, so none is an orphan."""
    linked = {os.path.normpath(os.path.join(ROOT, t.partition('#')[0])) for _, t in relative_links(PAGES[0])}
    assert set(PAGES[1:]) <= linked, sorted(set(PAGES[1:]) - linked)
