#!/bin/sh
# Regenerates the tray icons (64 x 64 PNG, committed; the app embeds them with include_bytes!)
# from ../source.svg with a badge per sync state: a coloured dot with its own glyph, so that
# the states differ in shape as well as colour. Needs ImageMagick (`convert`) with SVG support.
set -eu
cd "$(dirname "$0")"
base=$(sed -e '1d' -e '$d' ../source.svg)

# $1: file name; $2: badge colour; $3: the glyph (SVG in the badge, centred on 400,400);
# $4: the base icon's filter (none, or grey for offline).
render() {
  filter=""
  defs=""
  if [ "$4" = grey ]; then
    defs='<defs><filter id="grey"><feColorMatrix type="saturate" values="0.1"/></filter></defs>'
    filter=' filter="url(#grey)" opacity="0.75"'
  fi
  cat >"$1.svg" <<SVG
<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 512 512">
  $defs<g$filter>$base</g>
  <circle cx="392" cy="392" r="112" fill="$2" stroke="#ffffff" stroke-width="28"/>
  $3
</svg>
SVG
  convert -background none -density 72 "$1.svg" -resize 64x64 -strip "PNG32:$1.png"
  rm "$1.svg"
}

render live '#1f9d55' '<path d="M342 394l34 34 66-66" fill="none" stroke="#fff" stroke-width="30" stroke-linecap="round" stroke-linejoin="round"/>' none
render polling '#d97706' '<circle cx="340" cy="392" r="20" fill="#fff"/><circle cx="392" cy="392" r="20" fill="#fff"/><circle cx="444" cy="392" r="20" fill="#fff"/>' none
render offline '#6b7280' '<path d="M350 350l84 84M434 350l-84 84" stroke="#fff" stroke-width="30" stroke-linecap="round"/>' grey
render paused '#334155' '<path d="M366 348v88M418 348v88" stroke="#fff" stroke-width="32" stroke-linecap="round"/>' none
render code-needed '#dc2626' '<path d="M392 336v62" stroke="#fff" stroke-width="32" stroke-linecap="round"/><circle cx="392" cy="446" r="19" fill="#fff"/>' none
