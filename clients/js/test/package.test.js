// `npm pack` makes an installable package: installed into an empty project from its tarball,
// it imports by name, with its types and README.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = fileURLToPath(new URL('..', import.meta.url))

test('the packed tarball installs and imports as ferry-client', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-js-pack-'))
  try {
    const [packed] = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', dir],
      { cwd: here, encoding: 'utf8' }))
    assert.deepEqual(packed.files.map(file => file.path).sort(),
      ['README.md', 'ferry.d.ts', 'ferry.js', 'package.json'])
    const project = join(dir, 'project')
    execFileSync('mkdir', [project])
    writeFileSync(join(project, 'package.json'), '{"type": "module"}')
    execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', join(dir, packed.filename)],
      { cwd: project, encoding: 'utf8' })
    const installed = join(project, 'node_modules', 'ferry-client')
    assert.ok(existsSync(join(installed, 'ferry.d.ts')))
    assert.ok(existsSync(join(installed, 'README.md')))
    const exported = execFileSync('node', ['--input-type=module', '-e',
      "import * as Ferry from 'ferry-client'; console.log(Object.keys(Ferry).sort().join(' '))"],
    { cwd: project, encoding: 'utf8' })
    assert.equal(exported.trim(),
      'CLOSE Client ContiguousIds FerryError addressKey connect default sameAddress start')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
