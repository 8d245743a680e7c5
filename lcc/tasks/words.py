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

#: niah's word values: none equals, contains or is contained in a key word (ADJECTIVES, WORDS) or a word of the
#: task's own frame, and none contains another, so an output that repeats the question or a key cannot
#: hold a value (tests/test_tasks.py checks it); ``VALUES`` keeps the candidates that pass.
_VALUE_CANDIDATES = """acorn almond amber antler apron attic avocado bagel balcony bamboo banjo barley barrel beetle
biscuit blossom bonnet bouquet bramble brick broom buffalo cactus canoe caramel carrot cashew cathedral cedar
chimney chisel cider cinnamon clover cobble coconut comet coral cricket crocodile cupboard daisy dandelion denim
dinghy donkey doughnut dune elbow elephant emerald falcon ferret fiddle flamingo flute freckle galaxy gazelle
geyser ginger giraffe gravel griddle hamster hazel hedgehog hickory hornet iguana igloo ivory jasmine jellyfish
juniper kayak kiwi koala lagoon lavender leopard lettuce lobster locket lychee mango mantis meteor mitten mosaic
moth muffin mustard nectar nutmeg oatmeal octopus olive opal otter panda papaya pebble pelican penguin pickle
pinecone platypus plum poppy porcupine pretzel quail quartz quilt radish raisin reindeer rhubarb saffron
sapphire scarf seashell sequoia sparrow spinach squirrel sunflower teapot thimble thistle toucan truffle tulip
turnip vanilla vulture walrus waffle weasel whistle willow yogurt zebra zucchini""".split()



def value_words(frame_words: set[str]) -> list[str]:
    """The candidates that share no substring relation with a key word or another value, and are no word of
    the task's frame (``frame_words``, lower case)."""
    keys = set(WORDS) | set(ADJECTIVES)
    out: list[str] = []
    for w in _VALUE_CANDIDATES:
        if w in frame_words or any(w in k or k in w for k in keys) or any(w in v or v in w for v in out):
            continue
        out.append(w)
    return out
