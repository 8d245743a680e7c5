"""Plain English words for needle keys and word values (offline; RULER draws them from a word list too)."""

WORDS = """apple anchor arrow badge basket beacon bicycle blanket bottle bridge bucket butter cabin camera candle
canvas carpet castle cellar chair cherry circle cliff clock cloud compass copper cotton cradle crystal curtain
desert diamond dolphin dragon drum eagle engine feather fence ferry forest fountain garden garlic glacier globe
guitar hammer harbor helmet honey island jacket kettle ladder lantern lemon letter lighthouse magnet maple marble
meadow mirror monkey mountain needle notebook ocean onion orange orchard oyster paddle palace parrot pencil
pepper piano pillow planet pocket pumpkin puzzle rabbit raven ribbon river rocket saddle salmon shadow shelter
silver spider stable statue tiger tomato tower tractor trumpet tunnel turtle umbrella valley velvet violin
wagon walnut window winter wizard""".split()

ADJECTIVES = """ancient bitter bold brave bright broad calm clever crimson curious damp dark eager early empty
fancy fierce gentle giant golden hidden hollow humble icy jolly keen lazy little lively lucky merry misty modern
narrow noble odd pale polite proud quiet rapid rough round rusty shiny silent sleepy smooth solid sour spicy
steady sticky stormy sunny swift tall tender tidy tiny wandering warm wild windy wise wooden young""".split()
