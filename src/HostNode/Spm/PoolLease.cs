using System.Diagnostics;
using System.Globalization;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;
using IOFile = System.IO.File;

namespace LiveMigration.HostNode.Spm;

/// <summary>
/// The pool's lease record on shared storage: who holds the SPM role, under which generation, a renewal counter, and the
/// holder's process (<see cref="HolderProcess"/>; absent in records written before it was kept, or where /proc does not tell).
/// </summary>
public sealed record LeaseRecord(string Holder, long Generation, long Renewal, HolderProcess? Process = null)
{
    public static readonly LeaseRecord None = new("", 0, 0);
    public bool IsFree => Holder.Length == 0;
}

/// <summary>How the last <see cref="PoolLease.TryAcquireAsync"/> ended: what it saw, not how long it took.</summary>
public enum LeaseAttempt
{
    None,
    /// <summary>Found released (at the ask, or while watched): taken without watching out a period.</summary>
    TakenFree,
    /// <summary>Watched the holder's record stay unchanged for the period plus the margin, then took it.</summary>
    TakenExpired,
    /// <summary>
    /// Took it without watching further: this process had already seen the holder's record unchanged for the period plus
    /// the margin (<see cref="PoolLease.StartObserving"/>) when it asked.
    /// </summary>
    TakenExpiredAsObserved,
    /// <summary>Took it without watching: the holder's process, under this same kernel, is gone (<see cref="HolderProcess.IsProvablyGone"/>).</summary>
    TakenFromGoneHolder,
    /// <summary>The record changed while watched (its holder renewed it, or another took it): not taken. (Released: taken as free.)</summary>
    RecordChanged,
    /// <summary>This instance held it already.</summary>
    AlreadyHeld,
    /// <summary>Another acquirer wrote first (before or after this one's write): not taken.</summary>
    LostRace,
    /// <summary>
    /// Changes this process started under its previous hold are still running (a lost or released lease's SPM being
    /// stopped): not taken, or they would pass the fence under the new generation.
    /// </summary>
    EarlierChangesRunning,
}

/// <summary>
/// The SPM lease of DESIGN §7a, a delta lease as sanlock's: a KEY=VALUE file on the pool's shared storage
/// (HOLDER GENERATION RENEWAL), written atomically. No two clocks need to agree: an acquirer takes the lease
/// only after it has watched the record stay unchanged for longer than the period plus a margin on its own
/// monotonic clock (or finds it released, or its holder's process provably gone: <see cref="HolderProcess"/>), writes the
/// next generation, waits the margin and reads it back.
/// The holder renews every third of the period and counts the lease lost the moment a renewal fails or the
/// record shows another holder or generation. <see cref="CheckAsync"/> is the fencing check every storage change
/// makes just before it changes anything: a stale SPM that wakes up after a pause is refused even before it
/// notices. Not thread-affine; one instance per process and lease file.
/// </summary>
public sealed class PoolLease : IStorageFence, IAsyncDisposable
{
    private readonly string _path;
    private readonly TimeSpan _period;
    private readonly TimeSpan _margin;
    private readonly object _gate = new();
    private CancellationTokenSource? _renewing;
    private Task _renewal = Task.CompletedTask;
    private long _generation;
    private bool _held;
    private Action<Exception?>? _lost;
    // The record as this process last read it and since when (its monotonic clock): an acquirer counts the holder's
    // silence from the first read that saw it, which the observing reads move well before the acquirer asks.
    private LeaseRecord? _observed;
    private long _observedSince;
    private int _observing;
    // the highest generation this process ever read: a record that went missing or back is never taken with a token used before
    private long _highestGeneration;
    private readonly CancellationTokenSource _disposed = new();
    // The storage changes under way that this lease fenced (BeginChangeAsync), and a task that ends when none is: a release
    // waits for it, so the record is freed only once nothing this holder started can still write.
    private int _changes;
    private TaskCompletionSource _noChanges = Ended();

    public PoolLease(string path, string holder, TimeSpan period, TimeSpan margin)
    {
        if (string.IsNullOrWhiteSpace(holder) || holder.Contains('\n') || holder.Contains('='))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"lease holder name '{holder}' must be one printable line without '='");
        if (period <= TimeSpan.Zero || margin <= TimeSpan.Zero)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"lease period {period} and margin {margin} must be positive");
        _path = Path.GetFullPath(path);
        Holder = holder;
        _period = period;
        _margin = margin;
    }

    public string Holder { get; }

    /// <summary>
    /// How often an acquirer reads the record it watches: a third of the period at most (it must see two renewals within
    /// one), and once a second on long periods, so a holder that releases it (a graceful hand-over, whose release waits for
    /// its changes to end) is followed within a second, not a third of a period later.
    /// </summary>
    private TimeSpan WatchInterval => _period / 3 < TimeSpan.FromSeconds(1) ? _period / 3 : TimeSpan.FromSeconds(1);

    /// <summary>The generation this holder acquired (the fencing token); 0 while not held.</summary>
    public long Generation
    {
        get { lock (_gate) return _held ? _generation : 0; }
    }

    public bool IsHeld
    {
        get { lock (_gate) return _held; }
    }

    /// <summary>How the last acquire ended; tests and logs read it instead of timing the attempt.</summary>
    public LeaseAttempt LastAttempt { get; private set; }

    /// <summary>How long this process has read the record unchanged (zero before its first read).</summary>
    public TimeSpan RecordUnchangedFor
    {
        get { lock (_gate) return _observed is null ? TimeSpan.Zero : Stopwatch.GetElapsedTime(_observedSince); }
    }

    /// <summary>How long this process has read <paramref name="record"/> unchanged; zero once it read another since.</summary>
    private TimeSpan UnchangedFor(LeaseRecord record)
    {
        lock (_gate) return record == _observed ? Stopwatch.GetElapsedTime(_observedSince) : TimeSpan.Zero;
    }

    private LeaseRecord Observed(LeaseRecord record)
    {
        // A holder's every write changes the record (its renewal counter or generation only grow), so a record read the same
        // at two times was not renewed in between, whatever was read or not read meanwhile.
        lock (_gate)
        {
            if (record != _observed)
            {
                _observed = record;
                _observedSince = Stopwatch.GetTimestamp();
            }
            _highestGeneration = Math.Max(_highestGeneration, record.Generation);
        }
        return record;
    }

    /// <summary>
    /// Keeps reading the record every third of the period while this process does not hold it, so that when it asks
    /// for the lease (its singleton moved here because the holder's node is gone) the holder's silence is already
    /// counted from the first read that saw the last renewal, not from the ask: a takeover after a host's death waits the
    /// rest of the period, not a whole period after the cluster noticed. Until disposed; idempotent.
    /// </summary>
    public void StartObserving()
    {
        if (Interlocked.Exchange(ref _observing, 1) == 1) return;
        var stop = _disposed.Token;
        _ = Task.Run(async () =>
        {
            try
            {
                while (true)
                {
                    await Task.Delay(_period / 3, stop);
                    if (IsHeld) continue; // the renewals read it
                    try
                    {
                        await ReadAsync(stop);
                    }
                    catch (Exception e) when (e is not OperationCanceledException)
                    {
                        // unreadable for now (shared storage away): an acquirer reads for itself, and fails the same way
                    }
                }
            }
            catch (OperationCanceledException)
            {
                // disposed
            }
        }, CancellationToken.None);
    }

    public async Task<LeaseRecord> ReadAsync(CancellationToken ct = default)
    {
        IReadOnlyDictionary<string, string> values;
        try
        {
            // Opened, not asked whether it exists: File.Exists says no on any error (permission, a stale NFS handle), and a
            // lease read as free is taken without a watch.
            await using (IOFile.OpenRead(_path)) { }
            values = await KeyValueFile.ReadAsync(_path, ct);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException
                                       || e is OperationFailedException { InnerException: FileNotFoundException or DirectoryNotFoundException })
        {
            return Observed(LeaseRecord.None);
        }
        long Number(string key) =>
            values.TryGetValue(key, out var text) && long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n)
                ? n
                : throw new OperationFailedException(ErrorCodes.IoError, $"lease record {_path} has no valid {key}");
        HolderProcess? process = null;
        if (values.TryGetValue("BOOT", out var boot))
            process = new HolderProcess(boot, values.GetValueOrDefault("NAMESPACES", ""), checked((int)Number("PID")), Number("PIDSTART"));
        return Observed(new LeaseRecord(values.GetValueOrDefault("HOLDER", ""), Number("GENERATION"), Number("RENEWAL"), process));
    }

    private static IEnumerable<KeyValuePair<string, string>> Values(LeaseRecord record)
    {
        yield return new("HOLDER", record.Holder);
        yield return new("GENERATION", record.Generation.ToString(CultureInfo.InvariantCulture));
        yield return new("RENEWAL", record.Renewal.ToString(CultureInfo.InvariantCulture));
        if (record.Process is not { } process) yield break;
        yield return new("BOOT", process.BootId);
        yield return new("NAMESPACES", process.Namespaces);
        yield return new("PID", process.Pid.ToString(CultureInfo.InvariantCulture));
        yield return new("PIDSTART", process.StartTicks.ToString(CultureInfo.InvariantCulture));
    }

    /// <summary>
    /// Tries once to take the lease: true when this holder has it (a new generation, renewed from now on), false
    /// when another holder is alive (its record changed while watched) or won the race. Watches the record until this
    /// process has read it unchanged for the period plus the margin (counted from its first such read, which
    /// <see cref="StartObserving"/> makes early), unless the lease is free or its holder's process is provably gone
    /// (<see cref="HolderProcess"/>).
    /// <paramref name="lost"/> is called once if it is lost later.
    /// </summary>
    public async Task<bool> TryAcquireAsync(Action<Exception?>? lost = null, CancellationToken ct = default)
    {
        if (IsHeld)
        {
            LastAttempt = LeaseAttempt.AlreadyHeld;
            return true;
        }
        LastAttempt = LeaseAttempt.None; // until this attempt ends (an exception leaves it so)
        var seen = await ReadAsync(ct);
        // A holder whose process is gone renews nothing and writes nothing more: as good as a released lease. What is left
        // of it (an orphaned qemu-img convert) the new SPM kills before it copies (OrphanCopies).
        var holderGone = !seen.IsFree && HolderProcess.NamesThisMachine(seen.Holder) && seen.Process?.IsProvablyGone() == true;
        var watched = false;
        if (!seen.IsFree && !holderGone)
        {
            // Delta lease: alive means renewed within a period; only this process's monotonic clock measures it.
            while (UnchangedFor(seen) is var unchanged && unchanged <= _period + _margin)
            {
                watched = true;
                var rest = _period + _margin - unchanged + TimeSpan.FromMilliseconds(1);
                await Task.Delay(rest < WatchInterval ? rest : WatchInterval, ct);
                var now = await ReadAsync(ct);
                if (now.IsFree)
                {
                    // released while watched (its holder's changes all ended): taken as a free one, now, not at the next ask
                    seen = now;
                    break;
                }
                if (now != seen) return Attempted(LeaseAttempt.RecordChanged);
            }
        }
        // Re-read just before writing: a competitor that wrote meanwhile wins.
        if (await ReadAsync(ct) != seen) return Attempted(LeaseAttempt.LostRace);
        // Nothing begins while the lease is not held, so none of this process's earlier changes starts after this check.
        if (ChangesInProgress > 0) return Attempted(LeaseAttempt.EarlierChangesRunning);
        long next;
        lock (_gate) next = Math.Max(seen.Generation, _highestGeneration) + 1;
        var mine = new LeaseRecord(Holder, next, 0, HolderProcess.Current);
        // Replaced only if the record is still the one seen, checked after the fsync (as a renewal does).
        Directory.CreateDirectory(Path.GetDirectoryName(_path)!);
        if (!await KeyValueFile.WriteAtomicallyIfAsync(_path, Values(mine), async () => await ReadAsync(ct) == seen, ct))
            return Attempted(LeaseAttempt.LostRace);
        // Two acquirers that both passed the re-read: the last write stands, and the margin lets both see it.
        await Task.Delay(_margin, ct);
        if (await ReadAsync(ct) != mine) return Attempted(LeaseAttempt.LostRace);
        LastAttempt = seen.IsFree ? LeaseAttempt.TakenFree
            : holderGone ? LeaseAttempt.TakenFromGoneHolder
            : watched ? LeaseAttempt.TakenExpired
            : LeaseAttempt.TakenExpiredAsObserved;
        lock (_gate)
        {
            _held = true;
            _generation = mine.Generation;
            _lost = lost;
            _renewing = new CancellationTokenSource();
            var stop = _renewing.Token;
            _renewal = Task.Run(() => RenewAsync(stop), CancellationToken.None);
        }
        return true;
    }

    private bool Attempted(LeaseAttempt outcome)
    {
        LastAttempt = outcome;
        return false;
    }

    private async Task RenewAsync(CancellationToken stop)
    {
        try
        {
            while (true)
            {
                await Task.Delay(_period / 3, stop);
                try
                {
                    if (!await RenewOnceAsync(stop)) return;
                }
                catch (Exception e) when (!stop.IsCancellationRequested)
                {
                    // A renewal that fails may let another holder in after a period: counted lost now (nothing new starts,
                    // the SPM is stopped), not then. Renewing goes on until the release ends it, as the changes already
                    // under way end only once the SPM killed them: tried again, or the lease would lapse under them.
                    RenewalError = e.Message;
                    Lose(e);
                }
            }
        }
        catch (Exception) when (stop.IsCancellationRequested)
        {
            // released (a renewal under way when it was may end in any error)
        }
    }

    /// <summary>The last renewal that failed while the lease was being given up (its changes still running), for the log.</summary>
    public string? RenewalError
    {
        get { lock (_gate) return _renewalError; }
        private set { lock (_gate) _renewalError = value; }
    }

    private string? _renewalError;

    /// <summary>One renewal; false when the record is no longer this holder's (the lease is lost, renewing is over).</summary>
    private async Task<bool> RenewOnceAsync(CancellationToken stop)
    {
        long generation;
        lock (_gate) generation = _generation;
        var current = await ReadAsync(stop);
        if (current.Holder != Holder || current.Generation != generation)
        {
            Lose(new OperationFailedException(ErrorCodes.Fenced,
                $"the SPM lease {_path} is now held by '{current.Holder}' with generation {current.Generation}; this holder had generation {generation}"));
            return false;
        }
        // Replaced only if the record is still the one just read, checked after the fsync: a holder paused between
        // its read and its write (SIGSTOP, a stall in fsync) must not write its stale record over a successor's.
        // The next count from the record, not from this process's: a write that landed but then failed (its folder's fsync)
        // would otherwise be written again the same, and a record unchanged is a record not renewed.
        var renewal = current.Renewal;
        var renewed = await KeyValueFile.WriteAtomicallyIfAsync(_path, Values(current with { Renewal = renewal + 1 }),
            async () => await ReadAsync(stop) == current, stop);
        if (!renewed)
        {
            var now = await ReadAsync(stop);
            Lose(new OperationFailedException(ErrorCodes.Fenced,
                $"the SPM lease {_path} changed during its renewal: now '{now.Holder}' generation {now.Generation}; this holder had generation {generation}"));
            return false;
        }
        RenewalError = null;
        return true;
    }

    private void Lose(Exception? why)
    {
        Action<Exception?>? lost;
        lock (_gate)
        {
            if (!_held) return;
            _held = false;
            lost = _lost;
            _lost = null;
        }
        lost?.Invoke(why);
    }

    /// <summary>
    /// The fencing check, made just before a storage change: the record on storage still names this holder and
    /// generation and the lease was not lost. Refuses with FENCED otherwise.
    /// </summary>
    public async Task CheckAsync(CancellationToken ct = default)
    {
        long generation;
        lock (_gate)
        {
            if (!_held)
                throw new OperationFailedException(ErrorCodes.Fenced, $"this host ('{Holder}') does not hold the SPM lease {_path}: it changes no storage");
            generation = _generation;
        }
        var current = await ReadAsync(ct);
        if (current.Holder != Holder || current.Generation != generation)
        {
            Lose(new OperationFailedException(ErrorCodes.Fenced, $"the SPM lease {_path} moved to '{current.Holder}' generation {current.Generation}"));
            throw new OperationFailedException(ErrorCodes.Fenced,
                $"the SPM lease {_path} is held by '{current.Holder}' with generation {current.Generation}, not by '{Holder}' with {generation}: a stale SPM changes nothing");
        }
    }

    /// <summary>Ends when no storage change this lease fenced is under way (at once when none is).</summary>
    public Task ChangesEnded
    {
        get { lock (_gate) return _noChanges.Task; }
    }

    /// <summary>How many storage changes this lease fenced are under way (a release waits for them).</summary>
    public int ChangesInProgress
    {
        get { lock (_gate) return _changes; }
    }

    public async Task<IDisposable> BeginChangeAsync(CancellationToken ct = default)
    {
        lock (_gate)
        {
            if (!_held)
                throw new OperationFailedException(ErrorCodes.Fenced, $"this host ('{Holder}') does not hold the SPM lease {_path}: it changes no storage");
            if (_changes++ == 0) _noChanges = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        var change = new Change(this);
        try
        {
            await CheckAsync(ct);
            return change;
        }
        catch
        {
            change.Dispose();
            throw;
        }
    }

    private void EndChange()
    {
        lock (_gate)
            if (--_changes == 0) _noChanges.TrySetResult();
    }

    private sealed class Change(PoolLease lease) : IDisposable
    {
        private int _ended;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _ended, 1) == 0) lease.EndChange();
        }
    }

    private static TaskCompletionSource Ended()
    {
        var ended = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        ended.SetResult();
        return ended;
    }

    /// <summary>
    /// Stops renewing while still believing the lease held: what a holder paused (GC, SIGSTOP) or cut off from the
    /// storage looks like to the others. For tests of fencing.
    /// </summary>
    internal void StopRenewing()
    {
        lock (_gate) _renewing?.Cancel();
    }

    /// <summary>
    /// Gives the lease up: refuses every new change at once, waits until the changes it fenced that are under way ended
    /// (renewing meanwhile, so no other SPM starts beside them: an SPM that stops cancels its copies, whose qemu-img is
    /// killed and reaped, which may take seconds), then stops renewing and, when the record is still this holder's,
    /// marks it free so the next SPM need not wait a period.
    /// </summary>
    public async Task ReleaseAsync(CancellationToken ct = default)
    {
        CancellationTokenSource? renewing;
        long generation;
        Task noChanges, renewal;
        lock (_gate)
        {
            renewing = _renewing;
            _renewing = null;
            generation = _generation;
            var wasHeld = _held;
            _held = false;
            _lost = null;
            noChanges = _noChanges.Task;
            renewal = _renewal;
            if (!wasHeld && renewing is null) return;
        }
        // Not cancellable: the lease stays (renewed) exactly as long as a change it fenced may still write.
        await noChanges;
        renewing?.Cancel();
        await renewal;
        renewing?.Dispose();
        var current = await ReadAsync(ct);
        if (current.Holder == Holder && current.Generation == generation)
            // only over the record just read: a successor that took it meanwhile keeps it
            await KeyValueFile.WriteAtomicallyIfAsync(_path, Values(current with { Holder = "", Process = null }),
                async () => await ReadAsync(ct) == current, ct);
    }

    public async ValueTask DisposeAsync()
    {
        await _disposed.CancelAsync();
        await ReleaseAsync();
    }
}
