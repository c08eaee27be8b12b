// The TypeScript declarations against the code: every export and every public method of
// Client is declared in ferry.d.ts, and everything declared exists. (`npm run typecheck`
// checks a typed usage of them, test/usage.ts.)

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import * as Ferry from 'ferry-client'

const declarations = readFileSync(new URL('../ferry.d.ts', import.meta.url), 'utf8')

test('the module exports what ferry.d.ts declares', () => {
  const declared = [...declarations.matchAll(/^export (?:declare )?(?:function|class|const) (\w+)/gm)]
    .map(match => match[1])
  const exported = Object.keys(Ferry).filter(name => name !== 'default')
  assert.deepEqual(new Set(exported), new Set(declared))
  const defaults = /declare const _default: \{([^}]*)\}/.exec(declarations)[1]
  const declaredDefaults = [...defaults.matchAll(/(\w+): typeof/g)].map(match => match[1])
  assert.deepEqual(new Set(Object.keys(Ferry.default)), new Set(declaredDefaults))
})

test('Client has the methods ferry.d.ts declares, and no other public one', () => {
  const body = /export class Client \{([\s\S]*?)\n\}/.exec(declarations)[1]
  const declared = new Set([...body.matchAll(/^ {2}(\w+) \(/gm)].map(match => match[1]))
  declared.delete('constructor')
  const methods = Object.getOwnPropertyNames(Ferry.Client.prototype)
    .filter(name => name !== 'constructor' && !name.startsWith('_'))
  assert.deepEqual(new Set(methods), declared)
})
