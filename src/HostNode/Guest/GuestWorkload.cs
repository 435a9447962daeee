using System.Diagnostics;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Guest;

public enum WritePattern { Sequential, Random }

/// <summary>What the guest writes, where, and how fast.</summary>
/// <param name="SocketPath">The unix socket of the drive's NBD export.</param>
/// <param name="ExportName">The NBD export name on that socket.</param>
/// <param name="Drive">The image the drive is; every block carries it.</param>
/// <param name="RegionOffset">Start of the region written, in bytes; a multiple of <paramref name="BlockSize"/>.</param>
/// <param name="RegionLength">Length of the region in bytes, a multiple of <paramref name="BlockSize"/>; 0 means up to the end of the disk.</param>
/// <param name="LedgerPath">The ledger file, created or appended to (an existing one must be for the same drive and block size).</param>
/// <param name="RateBytesPerSecond">Bytes per second to write; 0 writes as fast as the export acknowledges.</param>
/// <param name="RandomSeed">Seed of the random pattern, so a run can be repeated.</param>
/// <param name="ForceUnitAccess">Send every write with FUA, so an acknowledged write is durable on its own.</param>
/// <param name="RequestTimeout">Per-request NBD timeout; a write slower than this counts as a lost connection. Default 30 s.</param>
/// <param name="FlushInterval">How often the guest sends NBD FLUSH while it has acknowledged writes no flush covered, like a guest
/// that cares about its data (a journaling file system commits, a database fsyncs); null = <see cref="GuestWorkload.DefaultFlushInterval"/>,
/// zero = never (nothing is durable until the stop's flush).</param>
/// <param name="ContinueAfterWritten">Sequential: start after as many blocks as the ledger holds already, so a run after runs that
/// each started at the region's first block goes on where they ended and covers blocks they did not (wrapping at the end).</param>
/// <param name="KeptRequests">How many of the latest requests <see cref="GuestWorkload.StallDuring"/> can look back over (24 bytes each);
/// null = <see cref="GuestWorkload.DefaultKeptRequests"/>.</param>
public sealed record GuestWorkloadOptions(
    string SocketPath,
    string ExportName,
    ImageId Drive,
    long RegionOffset,
    long RegionLength,
    string LedgerPath,
    int BlockSize = BlockStamp.DefaultBlockSize,
    long RateBytesPerSecond = 0,
    WritePattern Pattern = WritePattern.Sequential,
    int RandomSeed = 1,
    bool ForceUnitAccess = false,
    TimeSpan? RequestTimeout = null,
    TimeSpan? FlushInterval = null,
    int? KeptRequests = null,
    bool ContinueAfterWritten = false)
{
    /// <summary>The flush interval in effect (zero: never).</summary>
    public TimeSpan EffectiveFlushInterval => FlushInterval ?? GuestWorkload.DefaultFlushInterval;
}

/// <summary>A snapshot of a workload's counters.</summary>
/// <param name="Writes">Writes the server acknowledged.</param>
/// <param name="Bytes">Bytes in those writes.</param>
/// <param name="Errors">Failed requests (the workload stops at the first one).</param>
/// <param name="MaxLatency">The longest acknowledged write (the longest stall the guest saw) since the start or the last <see cref="GuestWorkload.ResetLongestStall"/>.</param>
/// <param name="MaxLatencyAt">When that write was sent.</param>
/// <param name="LastError">The error that stopped the workload, if any.</param>
/// <param name="Running">True until the workload stopped (on request or on an error).</param>
/// <param name="AverageLatency">Mean latency of the acknowledged writes.</param>
/// <param name="Elapsed">Time since the workload started writing.</param>
/// <param name="DurableWrites">Acknowledged writes of this run that a completed FLUSH (or their own FUA) made durable.</param>
/// <param name="Flushes">FLUSH requests completed.</param>
/// <param name="MaxFlushLatency">The longest FLUSH.</param>
/// <param name="LatencyP99">The write latency 99% of the acknowledged writes stayed under, in the same window as <paramref name="MaxLatency"/>.</param>
public sealed record GuestWorkloadStats(
    long Writes,
    long Bytes,
    long Errors,
    TimeSpan MaxLatency,
    DateTimeOffset? MaxLatencyAt,
    string? LastError,
    bool Running,
    TimeSpan AverageLatency,
    TimeSpan Elapsed,
    long DurableWrites = 0,
    long Flushes = 0,
    TimeSpan MaxFlushLatency = default,
    TimeSpan LatencyP99 = default)
{
    public double MegabytesPerSecond => Elapsed > TimeSpan.Zero ? Bytes / 1048576.0 / Elapsed.TotalSeconds : 0;
}

/// <summary>One request the guest sent: when (UTC), how long until its answer, and whether it was a FLUSH or a write.</summary>
public readonly record struct GuestRequest(DateTimeOffset SentAt, TimeSpan Latency, bool Flush)
{
    public DateTimeOffset AnsweredAt => SentAt + Latency;
}

/// <summary>The longest write and the longest FLUSH a guest had in flight during a time window; null where it had none.</summary>
/// <param name="LongestWriteSentAt">When that longest write was sent (it may have been sent before the window).</param>
public sealed record GuestStall(TimeSpan? LongestWrite, TimeSpan? LongestFlush, int Requests, DateTimeOffset? LongestWriteSentAt = null);

/// <summary>
/// The guest: writes stamped blocks through a drive's NBD export in the background, records each write in its
/// <see cref="WriteLedger"/> (sent, acknowledged, then made durable by a FLUSH every <see cref="GuestWorkloadOptions.FlushInterval"/>
/// or by FUA on every write), and keeps the counters and the longest stall. A lost connection or a failed request is
/// recorded and stops the workload; whoever runs it decides what that means.
/// </summary>
public sealed class GuestWorkload : IAsyncDisposable
{
    /// <summary>
    /// 100 ms: a kill loses at most ~100 ms of acknowledged writes, in the range of what guests accept (databases fsync per
    /// commit, ext4 commits every 5 s), while costing at most 10 FLUSHes a second whatever the write rate, each of which QEMU
    /// turns into a qcow2 metadata write-back and an fdatasync. A count of writes would flush far too often at full speed
    /// and almost never at a slow rate; time bounds the exposure either way.
    /// </summary>
    public static readonly TimeSpan DefaultFlushInterval = TimeSpan.FromMilliseconds(100);

    /// <summary>How many of the latest requests <see cref="StallDuring"/> looks back over unless told: a minute of 4 KiB writes at 4 MiB/s.</summary>
    public const int DefaultKeptRequests = 1 << 16;

    private readonly object _gate = new();
    private readonly CancellationTokenSource _stop = new();
    private NbdClient? _client;
    private WriteLedger? _ledger;
    private Task? _loop;
    private long _writes;
    private long _bytes;
    private long _errors;
    private TimeSpan _maxLatency;
    private DateTimeOffset? _maxLatencyAt;
    private readonly LatencyHistogram _latencies = new();
    // The latest requests, oldest overwritten first: what the guest felt during a window (a switch) asked for afterwards.
    private readonly GuestRequest[] _recent;
    private long _requests;
    private TimeSpan _totalLatency;
    private long _flushes;
    // The ledger file may hold earlier runs: the counters are this run's, like Writes.
    private long _durableBefore;
    private TimeSpan _maxFlushLatency;
    private string? _lastError;
    private bool _running;
    private long _startTimestamp;
    private long _endTimestamp;
    private GuestWorkloadStats? _final;

    public GuestWorkload(GuestWorkloadOptions options)
    {
        BlockStamp.ValidateBlockSize(options.BlockSize);
        if (options.RegionOffset < 0 || options.RegionOffset % options.BlockSize != 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"region offset {options.RegionOffset} is not a non-negative multiple of the {options.BlockSize}-byte block size");
        if (options.RegionLength < 0 || options.RegionLength % options.BlockSize != 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"region length {options.RegionLength} is not a non-negative multiple of the {options.BlockSize}-byte block size");
        if (options.FlushInterval is { } interval && interval < TimeSpan.Zero)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"flush interval must be 0 (never) or positive, got {interval}");
        if (options.RateBytesPerSecond < 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"rate must be 0 (unlimited) or positive, got {options.RateBytesPerSecond} bytes/s");
        if (options.KeptRequests is < 1)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"kept requests must be at least 1, got {options.KeptRequests}");
        Options = options;
        _recent = new GuestRequest[options.KeptRequests ?? DefaultKeptRequests];
    }

    public GuestWorkloadOptions Options { get; }

    /// <summary>The ledger the workload records into; available once <see cref="StartAsync"/> returned.</summary>
    public WriteLedger Ledger => _ledger ?? throw new OperationFailedException(ErrorCodes.Conflict, "the guest workload has not been started");

    /// <summary>Completes when the workload stops writing, on request or on an error (it never faults).</summary>
    public Task Completion => _loop ?? Task.CompletedTask;

    /// <summary>
    /// Connects to the export, opens the ledger and starts writing in the background. A failure to connect or a
    /// region that does not fit the disk is thrown from here; later failures are recorded in the stats.
    /// </summary>
    public async Task StartAsync(CancellationToken ct = default)
    {
        if (_loop is not null || _client is not null)
            throw new OperationFailedException(ErrorCodes.Conflict, "the guest workload was started already");
        var client = await NbdClient.ConnectAsync(Options.SocketPath, Options.ExportName, Options.RequestTimeout, ct);
        try
        {
            var regionLength = Options.RegionLength == 0 ? client.ExportSize - Options.RegionOffset : Options.RegionLength;
            if (regionLength < Options.BlockSize || Options.RegionOffset + regionLength > client.ExportSize)
                throw new OperationFailedException(ErrorCodes.InvalidArgument,
                    $"region [{Options.RegionOffset}, +{regionLength}) does not hold a {Options.BlockSize}-byte block inside export '{Options.ExportName}' of {client.ExportSize} bytes");
            // A guest that was promised durability must not find out after a crash that the promise was never possible.
            if (Options.ForceUnitAccess && !client.SupportsFua)
                throw new OperationFailedException(ErrorCodes.InvalidArgument,
                    $"export '{Options.ExportName}' at {Options.SocketPath} does not advertise NBD_FLAG_SEND_FUA (transmission flags 0x{client.TransmissionFlags:x4}): " +
                    "writes with FUA are impossible; run without FUA");
            if (Options.EffectiveFlushInterval > TimeSpan.Zero && !client.SupportsFlush)
                throw new OperationFailedException(ErrorCodes.InvalidArgument,
                    $"export '{Options.ExportName}' at {Options.SocketPath} does not advertise NBD_FLAG_SEND_FLUSH (transmission flags 0x{client.TransmissionFlags:x4}): " +
                    "no write could be made durable; run with flush interval 0 to write without flushes");
            _ledger = WriteLedger.Open(Options.LedgerPath, Options.Drive, Options.BlockSize);
            _durableBefore = _ledger.DurableWrites;
            _client = client;
            lock (_gate)
            {
                _running = true;
                _startTimestamp = Stopwatch.GetTimestamp();
            }
            var blockCount = regionLength / Options.BlockSize;
            _loop = Task.Run(() => WriteLoopAsync(client, _ledger, blockCount, _stop.Token));
        }
        catch
        {
            _ledger?.Dispose();
            _ledger = null;
            await client.DisposeAsync();
            throw;
        }
    }

    private async Task WriteLoopAsync(NbdClient client, WriteLedger ledger, long blockCount, CancellationToken stop)
    {
        var block = new byte[Options.BlockSize];
        var random = new Random(Options.RandomSeed);
        var sequence = ledger.LastSequence;
        var flushInterval = Options.ForceUnitAccess ? TimeSpan.Zero : Options.EffectiveFlushInterval;
        long nextSequentialBlock = Options.ContinueAfterWritten ? ledger.BlockCount % blockCount : 0;
        long bytesSent = 0;
        var paceClock = Stopwatch.StartNew();
        var lastFlush = TimeSpan.Zero;
        try
        {
            while (!stop.IsCancellationRequested)
            {
                // Acknowledged writes no FLUSH covers yet: a guest that cares flushes them within the interval, even when idle.
                var flushDue = flushInterval > TimeSpan.Zero && ledger.NotDurableCount > 0
                    ? lastFlush + flushInterval - paceClock.Elapsed
                    : (TimeSpan?)null;
                if (flushDue <= TimeSpan.Zero)
                {
                    await FlushAsync(client, ledger, sequence);
                    lastFlush = paceClock.Elapsed;
                    continue;
                }
                if (Options.RateBytesPerSecond > 0)
                {
                    var due = TimeSpan.FromSeconds((double)bytesSent / Options.RateBytesPerSecond);
                    var ahead = due - paceClock.Elapsed;
                    if (flushDue is { } flushIn && flushIn < ahead)
                    {
                        await Task.Delay(flushIn, stop);
                        continue;
                    }
                    if (ahead > TimeSpan.FromMilliseconds(1))
                        await Task.Delay(ahead, stop);
                }

                var blockIndex = Options.Pattern == WritePattern.Random
                    ? random.NextInt64(blockCount)
                    : nextSequentialBlock++ % blockCount;
                var offset = Options.RegionOffset + blockIndex * Options.BlockSize;
                var sentAt = DateTimeOffset.UtcNow;
                var stamp = BlockStamp.Write(block, Options.Drive, offset, ++sequence, sentAt);
                ledger.RecordSent(stamp);
                var started = Stopwatch.GetTimestamp();
                // Not cancelled by the stop: the write in flight finishes (or times out), so it does not stay unacknowledged.
                await client.WriteAsync(offset, block, Options.ForceUnitAccess, CancellationToken.None);
                var latency = Stopwatch.GetElapsedTime(started);
                ledger.RecordAcknowledged(stamp, Options.ForceUnitAccess);
                bytesSent += block.Length;
                lock (_gate)
                {
                    _writes++;
                    _bytes += block.Length;
                    _totalLatency += latency;
                    _latencies.Record(latency);
                    Remember(new GuestRequest(sentAt, latency, Flush: false));
                    if (latency > _maxLatency)
                    {
                        _maxLatency = latency;
                        _maxLatencyAt = sentAt;
                    }
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // stopped on request while pacing
        }
        catch (OperationFailedException e)
        {
            RecordError(e.Message);
        }
        finally
        {
            lock (_gate)
            {
                _running = false;
                _endTimestamp = Stopwatch.GetTimestamp();
            }
        }
    }

    /// <summary>
    /// Sends FLUSH and, once it completed, records that it made every acknowledged write up to <paramref name="lastSent"/> durable.
    /// Only called with no write in flight (one request at a time), so every write up to there has had its answer.
    /// </summary>
    private async Task FlushAsync(NbdClient client, WriteLedger ledger, long lastSent)
    {
        var sentAt = DateTimeOffset.UtcNow;
        var started = Stopwatch.GetTimestamp();
        await client.FlushAsync(CancellationToken.None);
        var latency = Stopwatch.GetElapsedTime(started);
        ledger.RecordFlushed(lastSent);
        lock (_gate)
        {
            Remember(new GuestRequest(sentAt, latency, Flush: true));
            _flushes++;
            if (latency > _maxFlushLatency)
                _maxFlushLatency = latency;
        }
    }

    private void RecordError(string message)
    {
        lock (_gate)
        {
            _errors++;
            _lastError = message;
        }
    }

    /// <summary>Under <see cref="_gate"/>.</summary>
    private void Remember(GuestRequest request) => _recent[_requests++ % _recent.Length] = request;

    /// <summary>
    /// What the guest felt during [<paramref name="from"/>, <paramref name="to"/>] (UTC, e.g. a switch step as the Coordinator
    /// timed it): the longest write and the longest FLUSH among the answered requests in flight at any moment of it, each
    /// with its whole latency. Asked for after the window; a request still unanswered is not counted. Throws when the
    /// window reaches back further than the requests kept (<see cref="GuestWorkloadOptions.KeptRequests"/>).
    /// </summary>
    public GuestStall StallDuring(DateTimeOffset from, DateTimeOffset to)
    {
        if (to < from)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the window ends ({to:O}) before it starts ({from:O})");
        lock (_gate)
        {
            var kept = (int)Math.Min(_requests, _recent.Length);
            if (_requests > _recent.Length && _recent[_requests % _recent.Length].AnsweredAt > from)
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"the guest keeps its last {_recent.Length} requests, which begin after {from:O}: ask sooner after the window, or keep more");
            TimeSpan? write = null, flush = null;
            DateTimeOffset? writeSentAt = null;
            var counted = 0;
            for (var i = 0; i < kept; i++)
            {
                var r = _recent[(_requests - 1 - i) % _recent.Length];
                if (r.AnsweredAt < from)
                {
                    // requests are kept in the order they were answered (one at a time): all older ones ended before too
                    break;
                }
                if (r.SentAt > to) continue;
                counted++;
                if (r.Flush) flush = flush is { } f && f >= r.Latency ? f : r.Latency;
                else if (write is not { } w || r.Latency > w) (write, writeSentAt) = (r.Latency, r.SentAt);
            }
            return new GuestStall(write, flush, counted, writeSentAt);
        }
    }

    /// <summary>Starts a new window for <see cref="GuestWorkloadStats.MaxLatency"/> and <see cref="GuestWorkloadStats.LatencyP99"/>, e.g. just before a pivot.</summary>
    public void ResetLongestStall()
    {
        lock (_gate)
        {
            _maxLatency = TimeSpan.Zero;
            _maxLatencyAt = null;
            _latencies.Clear();
        }
    }

    public GuestWorkloadStats Stats
    {
        get
        {
            lock (_gate)
            {
                var elapsed = _startTimestamp == 0 ? TimeSpan.Zero
                    : Stopwatch.GetElapsedTime(_startTimestamp, _running ? Stopwatch.GetTimestamp() : _endTimestamp);
                return new GuestWorkloadStats(_writes, _bytes, _errors, _maxLatency, _maxLatencyAt, _lastError, _running,
                    _writes == 0 ? TimeSpan.Zero : _totalLatency / _writes, elapsed,
                    _ledger is null ? 0 : _ledger.DurableWrites - _durableBefore, _flushes, _maxFlushLatency, _latencies.Percentile(0.99));
            }
        }
    }

    /// <summary>
    /// Stops writing, waits for the write in flight, flushes the export so every acknowledged write is durable
    /// (when the connection still works, and recorded so in the ledger), disconnects and closes the ledger. Returns the final counters.
    /// </summary>
    public async Task<GuestWorkloadStats> StopAsync()
    {
        if (_final is not null)
            return _final;
        await _stop.CancelAsync();
        if (_loop is not null)
            await _loop;
        if (_client is { } client)
        {
            if (client.IsConnected && client.SupportsFlush && _ledger is { } ledger)
            {
                try
                {
                    // The loop has ended: no write is in flight, so the flush covers every write sent.
                    await FlushAsync(client, ledger, ledger.LastSequence);
                }
                catch (OperationFailedException e)
                {
                    RecordError($"flush after stop failed: {e.Message}");
                }
            }
            await client.DisposeAsync();
        }
        _ledger?.Dispose();
        _final = Stats;
        return _final;
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        _stop.Dispose();
    }
}
