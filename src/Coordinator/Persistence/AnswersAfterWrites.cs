namespace LiveMigration.Coordinator.Persistence;

/// <summary>
/// For a persistent actor that writes with PersistAsync and decides on facts still on their way to the journal: an answer
/// that needs no write of its own waits until every write issued before it is journaled, so nobody hears of a fact the
/// journal may still lose. (Akka's DeferAsync does the same through the journal, but its message must be serializable.)
/// Writes complete in the order they were issued; when one fails the actor stops and the waiting answers are dropped,
/// as the requesters' asks time out and retry.
/// </summary>
public sealed class AnswersAfterWrites
{
    private readonly Queue<(long After, Action Answer)> _waiting = new();
    private long _issued;
    private long _done;

    /// <summary>Call when a write is handed to PersistAsync.</summary>
    public void Issued() => _issued++;

    /// <summary>Call at the end of a write's PersistAsync handler: answers waiting on it (and nothing later) go out.</summary>
    public void Done()
    {
        _done++;
        while (_waiting.TryPeek(out var next) && next.After <= _done)
            _waiting.Dequeue().Answer();
    }

    /// <summary>Now when nothing is pending, else once the writes issued so far are journaled.</summary>
    public void Answer(Action answer)
    {
        if (_done == _issued) answer();
        else _waiting.Enqueue((_issued, answer));
    }
}
