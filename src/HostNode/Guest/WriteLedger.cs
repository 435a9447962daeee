using System.Globalization;
using System.Text;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Guest;

/// <summary>A write as the ledger knows it: enough to recognise the exact block it put on the disk.</summary>
public readonly record struct LedgerStamp(long Sequence, ulong Checksum)
{
    public override string ToString() => $"seq {Sequence} (checksum {Checksum:x16})";
}

/// <summary>What one block may hold, from the guest's point of view.</summary>
/// <param name="Durable">The newest write a completed FLUSH (or its own FUA) made durable; null when none was.</param>
/// <param name="Acknowledged">The newest write the server acknowledged (durable or not), or null when none was.</param>
/// <param name="Unacknowledged">Writes sent after <paramref name="Acknowledged"/> and never acknowledged (the connection died under them).</param>
/// <param name="SinceDurable">Every write sent after <paramref name="Durable"/> (all of them when none is durable), acknowledged or not, oldest first:
/// after a crash the block may hold any of them, or the durable one, and nothing older.</param>
public sealed record LedgerBlock(long Offset, LedgerStamp? Durable, LedgerStamp? Acknowledged, IReadOnlyList<LedgerStamp> Unacknowledged,
    IReadOnlyList<LedgerStamp> SinceDurable)
{
    /// <summary>True when the block holds its last acknowledged write, or a write sent after it whose fate is unknown: what a running VM must show.</summary>
    public bool IsCurrent(long sequence, ulong checksum) =>
        Acknowledged is { } a && a.Sequence == sequence && a.Checksum == checksum
        || Unacknowledged.Any(d => d.Sequence == sequence && d.Checksum == checksum);

    /// <summary>True when the block holds its newest durable write or any write sent after it: what must survive a crash.</summary>
    public bool KeepsDurable(long sequence, ulong checksum) =>
        Durable is { } d && d.Sequence == sequence && d.Checksum == checksum
        || SinceDurable.Any(w => w.Sequence == sequence && w.Checksum == checksum);
}

/// <summary>
/// Every write of a guest workload to one drive: a write is recorded as sent before it goes out, as acknowledged when
/// the server says so, and as durable once a FLUSH sent after its acknowledgement completed (or on its acknowledgement
/// when it was sent with FUA). So the verifier can hold durable writes to "never lost", accept an acknowledged but not
/// yet durable write as "in doubt" after a crash, and accept either stamp for a write whose connection died under it.
/// With a file, each record is appended as a line and handed to the OS at once (and the file is fsynced with every
/// flush record), so another process can <see cref="Load"/> and verify it later, even if the writer was killed.
/// </summary>
/// <remarks>
/// File format v2: a header line <c>LSM-WRITE-LEDGER v2 drive=&lt;image id&gt; block-size=&lt;bytes&gt;</c>, then
/// <c>W &lt;seq&gt; &lt;offset&gt; &lt;checksum hex&gt;</c> when a write is sent, <c>A &lt;seq&gt;</c> when it is acknowledged
/// (<c>A &lt;seq&gt; fua</c> for a write sent with FUA: durable on its acknowledgement), and <c>F &lt;seq&gt;</c> when a FLUSH
/// completed that was sent after every write up to &lt;seq&gt; had its answer (the workload keeps one request in flight), so
/// every acknowledged write up to &lt;seq&gt; is durable. <c>R</c> starts a new run (the ledger reopened to append): a write
/// acknowledged in an earlier run that no flush covered stays not durable for good, since a FLUSH on a new connection,
/// perhaps to a new QEMU after a crash, cannot bring back what the old one lost. v1 files (no F and no fua) still load, with nothing durable; opening
/// one to append rewrites its header to v2 first (temporary file, fsync, rename), so an old reader refuses it rather than
/// misreading it.
/// </remarks>
public sealed class WriteLedger : IDisposable
{
    private const string HeaderPrefix = "LSM-WRITE-LEDGER v";
    private const int CurrentVersion = 2;

    private readonly object _gate = new();
    private readonly Dictionary<long, BlockRecord> _blocks = new();
    private readonly Dictionary<long, (long Offset, ulong Checksum)> _unacknowledged = new();
    // Acknowledged writes no flush covered yet, in sequence order: what the next completed FLUSH makes durable.
    private readonly SortedDictionary<long, (long Offset, ulong Checksum)> _notDurable = new();
    private FileStream? _file;
    private long _lastSequence;
    private long _acknowledgedWrites;
    private long _durableWrites;
    private long _lastFlushedSequence;

    private WriteLedger(ImageId drive, int blockSize, string? path, int version = CurrentVersion)
    {
        BlockStamp.ValidateBlockSize(blockSize);
        Drive = drive;
        BlockSize = blockSize;
        FilePath = path;
        Version = version;
    }

    public ImageId Drive { get; }
    public int BlockSize { get; }
    /// <summary>The file format version the ledger was loaded from (or is written in).</summary>
    public int Version { get; private set; }
    /// <summary>The file the ledger appends to or was loaded from; null for an in-memory ledger.</summary>
    public string? FilePath { get; }
    /// <summary>False for a ledger <see cref="Load"/>ed to verify: it only reads.</summary>
    public bool IsWritable => _file is not null || FilePath is null;

    /// <summary>The highest sequence number recorded; a new workload on this ledger continues after it.</summary>
    public long LastSequence { get { lock (_gate) return _lastSequence; } }
    public int BlockCount { get { lock (_gate) return _blocks.Count; } }
    /// <summary>Writes sent and never acknowledged.</summary>
    public int UnacknowledgedCount { get { lock (_gate) return _unacknowledged.Count; } }
    public long AcknowledgedWrites { get { lock (_gate) return _acknowledgedWrites; } }
    /// <summary>Acknowledged writes that a completed FLUSH, or their own FUA, made durable.</summary>
    public long DurableWrites { get { lock (_gate) return _durableWrites; } }
    /// <summary>Acknowledged writes of this run that no completed FLUSH covers yet (what the next one will make durable).</summary>
    public int NotDurableCount { get { lock (_gate) return _notDurable.Count; } }
    /// <summary>The sequence up to which the last recorded FLUSH made acknowledged writes durable (0: none).</summary>
    public long LastFlushedSequence { get { lock (_gate) return _lastFlushedSequence; } }

    /// <summary>A ledger kept in memory only (tests, or a verifier in the same process).</summary>
    public static WriteLedger InMemory(ImageId drive, int blockSize = BlockStamp.DefaultBlockSize) => new(drive, blockSize, null);

    /// <summary>
    /// Opens the ledger file to append to, creating it with its header when missing. An existing file must be for the
    /// same drive and block size; its records are loaded so sequence numbers keep growing. A v1 file is upgraded to v2,
    /// and a last line cut short by a writer that died mid-line is cut off, so new records start on a line of their own.
    /// </summary>
    public static WriteLedger Open(string path, ImageId drive, int blockSize = BlockStamp.DefaultBlockSize)
    {
        WriteLedger ledger;
        if (File.Exists(path) && new FileInfo(path).Length > 0)
        {
            ledger = Load(path, out var wholeLength);
            if (ledger.Drive != drive || ledger.BlockSize != blockSize)
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"ledger {path} is for drive {ledger.Drive} with {ledger.BlockSize}-byte blocks, not drive {drive} with {blockSize}-byte blocks");
            if (ledger.Version < CurrentVersion)
                UpgradeHeader(path, ledger, wholeLength);
            else if (new FileInfo(path).Length != wholeLength)
                TruncateTo(path, wholeLength);
            ledger.Version = CurrentVersion;
            ledger._file = OpenForAppend(path);
            ledger.ApplyNewRun();
            ledger.AppendLine("R");
        }
        else
        {
            ledger = new WriteLedger(drive, blockSize, path);
            ledger._file = OpenForAppend(path);
            ledger.AppendLine(HeaderLine(drive, blockSize));
            ledger._file.Flush(flushToDisk: true);
        }
        return ledger;
    }

    private static string HeaderLine(ImageId drive, int blockSize) =>
        string.Create(CultureInfo.InvariantCulture, $"{HeaderPrefix}{CurrentVersion} drive={drive} block-size={blockSize}");

    /// <summary>Rewrites a v1 ledger with a v2 header (and without a torn last line): temporary file, fsync, rename.</summary>
    private static void UpgradeHeader(string path, WriteLedger ledger, long wholeLength)
    {
        var temporary = path + ".upgrade";
        try
        {
            var bytes = ReadPrefix(path, wholeLength);
            var firstNewline = Array.IndexOf(bytes, (byte)'\n');
            using (var output = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                output.Write(Encoding.UTF8.GetBytes(HeaderLine(ledger.Drive, ledger.BlockSize) + "\n"));
                output.Write(bytes.AsSpan(firstNewline + 1));
                output.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(temporary); } catch (IOException) { }
            throw new OperationFailedException(ErrorCodes.IoError, $"cannot upgrade write ledger {path} to v{CurrentVersion}: {e.Message}", e);
        }
    }

    private static byte[] ReadPrefix(string path, long length)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var bytes = new byte[length];
        stream.ReadExactly(bytes);
        return bytes;
    }

    private static void TruncateTo(string path, long length)
    {
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.Read);
            stream.SetLength(length);
            stream.Flush(flushToDisk: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OperationFailedException(ErrorCodes.IoError, $"cannot cut the torn last line off write ledger {path}: {e.Message}", e);
        }
    }

    private static FileStream OpenForAppend(string path)
    {
        try
        {
            // No buffer: every line goes to the OS as it is written, so a reader or a crash sees it.
            return new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.Read, bufferSize: 0);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OperationFailedException(ErrorCodes.IoError, $"cannot open write ledger {path}: {e.Message}", e);
        }
    }

    /// <summary>Reads a ledger file written by <see cref="Open"/>, possibly by another process, to verify against it.</summary>
    public static WriteLedger Load(string path) => Load(path, out _);

    /// <param name="wholeLength">The length of the file up to its last whole line.</param>
    private static WriteLedger Load(string path, out long wholeLength)
    {
        byte[] bytes;
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            using var memory = new MemoryStream();
            stream.CopyTo(memory);
            bytes = memory.ToArray();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OperationFailedException(ErrorCodes.IoError, $"cannot read write ledger {path}: {e.Message}", e);
        }
        // A line without its newline was cut short by a writer that died mid-line: it never counted.
        wholeLength = Array.LastIndexOf(bytes, (byte)'\n') + 1;
        var lines = Encoding.UTF8.GetString(bytes, 0, (int)wholeLength).Split('\n')[..^1];

        if (lines.Length == 0 || !lines[0].StartsWith(HeaderPrefix, StringComparison.Ordinal))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"{path} is not a write ledger (no '{HeaderPrefix}{CurrentVersion}' header)");
        var ledger = ParseHeader(path, lines[0]);
        var v2 = ledger.Version >= 2;
        for (var i = 1; i < lines.Length; i++)
        {
            var parts = lines[i].Split(' ');
            var ok = parts switch
            {
                ["W", var seq, var offset, var checksum] =>
                    long.TryParse(seq, NumberStyles.None, CultureInfo.InvariantCulture, out var s)
                    && long.TryParse(offset, NumberStyles.None, CultureInfo.InvariantCulture, out var o)
                    && ulong.TryParse(checksum, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var c)
                    && ledger.ApplySent(s, o, c),
                ["A", var seq] =>
                    long.TryParse(seq, NumberStyles.None, CultureInfo.InvariantCulture, out var s)
                    && ledger.ApplyAcknowledged(s, durable: false),
                ["A", var seq, "fua"] when v2 =>
                    long.TryParse(seq, NumberStyles.None, CultureInfo.InvariantCulture, out var s)
                    && ledger.ApplyAcknowledged(s, durable: true),
                ["F", var seq] when v2 =>
                    long.TryParse(seq, NumberStyles.None, CultureInfo.InvariantCulture, out var s)
                    && ledger.ApplyFlushed(s),
                ["R"] when v2 => ledger.ApplyNewRun(),
                _ => false,
            };
            if (!ok)
                throw new OperationFailedException(ErrorCodes.InvalidArgument,
                    $"write ledger {path} line {i + 1} is malformed or out of order: '{lines[i]}'");
        }
        return ledger;
    }

    private static WriteLedger ParseHeader(string path, string header)
    {
        var fields = header[HeaderPrefix.Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (fields.Length == 0 || !int.TryParse(fields[0], NumberStyles.None, CultureInfo.InvariantCulture, out var version)
                               || version < 1 || version > CurrentVersion)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"write ledger {path} has a header of a version this program does not know (it reads v1 to v{CurrentVersion}): '{header}'");
        ImageId? drive = null;
        int? blockSize = null;
        foreach (var field in fields[1..])
        {
            if (field.StartsWith("drive=", StringComparison.Ordinal))
                drive = ImageId.Parse(field["drive=".Length..]);
            else if (field.StartsWith("block-size=", StringComparison.Ordinal)
                     && int.TryParse(field["block-size=".Length..], NumberStyles.None, CultureInfo.InvariantCulture, out var size))
                blockSize = size;
        }
        if (drive is null || blockSize is null)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"write ledger {path} has a header without drive or block size: '{header}'");
        return new WriteLedger(drive.Value, blockSize.Value, path, version);
    }

    /// <summary>Records a write about to be sent. From now until acknowledged it is in doubt.</summary>
    public void RecordSent(BlockStamp stamp)
    {
        if (stamp.Drive != Drive || stamp.BlockSize != BlockSize)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"stamp for drive {stamp.Drive} with {stamp.BlockSize}-byte blocks does not belong in the ledger of drive {Drive} with {BlockSize}-byte blocks");
        lock (_gate)
        {
            EnsureWritable();
            if (!ApplySent(stamp.Sequence, stamp.Offset, stamp.Checksum))
                throw new OperationFailedException(ErrorCodes.InvalidArgument,
                    $"write seq {stamp.Sequence} at offset {stamp.Offset} is not after the ledger's last seq {_lastSequence} or not block aligned");
            AppendLine(string.Create(CultureInfo.InvariantCulture, $"W {stamp.Sequence} {stamp.Offset} {stamp.Checksum:x16}"));
        }
    }

    /// <summary>Records that the server acknowledged a write recorded with <see cref="RecordSent"/>.</summary>
    /// <param name="forceUnitAccess">The write was sent with FUA: its acknowledgement means it is durable.</param>
    public void RecordAcknowledged(BlockStamp stamp, bool forceUnitAccess = false)
    {
        lock (_gate)
        {
            EnsureWritable();
            if (!ApplyAcknowledged(stamp.Sequence, forceUnitAccess))
                throw new OperationFailedException(ErrorCodes.Conflict, $"write seq {stamp.Sequence} was acknowledged but never recorded as sent");
            var line = string.Create(CultureInfo.InvariantCulture, $"A {stamp.Sequence}");
            AppendLine(forceUnitAccess ? line + " fua" : line);
        }
    }

    /// <summary>
    /// Records a completed FLUSH that was sent when every write up to <paramref name="upToSequence"/> had its answer:
    /// each of them that was acknowledged is durable now. The file is fsynced, so the claim outlives the host too.
    /// </summary>
    /// <returns>How many acknowledged writes became durable.</returns>
    public long RecordFlushed(long upToSequence)
    {
        lock (_gate)
        {
            EnsureWritable();
            var before = _durableWrites;
            if (!ApplyFlushed(upToSequence))
                throw new OperationFailedException(ErrorCodes.InvalidArgument,
                    $"a flush up to seq {upToSequence} is before the last flush (seq {_lastFlushedSequence}) or after the last write sent (seq {_lastSequence})");
            AppendLine(string.Create(CultureInfo.InvariantCulture, $"F {upToSequence}"));
            SyncFile();
            return _durableWrites - before;
        }
    }

    /// <summary>What the block at <paramref name="offset"/> may hold now, or null when the ledger never wrote it.</summary>
    public LedgerBlock? Find(long offset)
    {
        lock (_gate)
            return _blocks.TryGetValue(offset, out var record) ? record.ToBlock(offset) : null;
    }

    /// <summary>Every block the ledger wrote, ordered by offset.</summary>
    public IReadOnlyList<LedgerBlock> Snapshot()
    {
        lock (_gate)
            return _blocks.OrderBy(b => b.Key).Select(b => b.Value.ToBlock(b.Key)).ToList();
    }

    private bool ApplySent(long sequence, long offset, ulong checksum)
    {
        if (sequence <= _lastSequence || offset < 0 || offset % BlockSize != 0)
            return false;
        _lastSequence = sequence;
        _unacknowledged[sequence] = (offset, checksum);
        if (!_blocks.TryGetValue(offset, out var record))
            _blocks[offset] = record = new BlockRecord();
        var stamp = new LedgerStamp(sequence, checksum);
        record.Unacknowledged.Add(stamp);
        record.SinceDurable.Add(stamp);
        return true;
    }

    private bool ApplyAcknowledged(long sequence, bool durable)
    {
        if (!_unacknowledged.Remove(sequence, out var sent))
            return false;
        var record = _blocks[sent.Offset];
        var stamp = new LedgerStamp(sequence, sent.Checksum);
        // A newer acknowledged write supersedes it and every older write still unacknowledged on that block.
        if (record.Acknowledged is null || record.Acknowledged.Value.Sequence < sequence)
            record.Acknowledged = stamp;
        record.Unacknowledged.RemoveAll(d => d.Sequence <= sequence);
        foreach (var superseded in _unacknowledged.Where(u => u.Value.Offset == sent.Offset && u.Key < sequence).Select(u => u.Key).ToList())
            _unacknowledged.Remove(superseded);
        _acknowledgedWrites++;
        if (durable)
            MakeDurable(record, stamp);
        else
            _notDurable[sequence] = sent;
        return true;
    }

    private bool ApplyFlushed(long upToSequence)
    {
        if (upToSequence < _lastFlushedSequence || upToSequence > _lastSequence)
            return false;
        _lastFlushedSequence = upToSequence;
        var covered = _notDurable.TakeWhile(w => w.Key <= upToSequence).ToList();
        foreach (var (sequence, (offset, checksum)) in covered)
        {
            _notDurable.Remove(sequence);
            MakeDurable(_blocks[offset], new LedgerStamp(sequence, checksum));
        }
        return true;
    }

    /// <summary>Writes acknowledged before this point and not covered by a flush yet can never be made durable by a later one.</summary>
    private bool ApplyNewRun()
    {
        _notDurable.Clear();
        return true;
    }

    private void MakeDurable(BlockRecord record, LedgerStamp stamp)
    {
        _durableWrites++;
        if (record.Durable is { } current && current.Sequence >= stamp.Sequence)
            return;
        record.Durable = stamp;
        // Nothing older than a durable write can be on the block any more; the list only keeps what may still replace it.
        record.SinceDurable.RemoveAll(w => w.Sequence <= stamp.Sequence);
    }

    private void EnsureWritable()
    {
        if (!IsWritable)
            throw new OperationFailedException(ErrorCodes.Conflict, $"write ledger {FilePath} was loaded to verify and cannot record writes");
    }

    private void AppendLine(string line)
    {
        if (_file is null)
            return;
        try
        {
            _file.Write(Encoding.UTF8.GetBytes(line + "\n"));
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            throw new OperationFailedException(ErrorCodes.IoError, $"cannot append to write ledger {FilePath}: {e.Message}", e);
        }
    }

    private void SyncFile()
    {
        try
        {
            _file?.Flush(flushToDisk: true);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            throw new OperationFailedException(ErrorCodes.IoError, $"cannot fsync write ledger {FilePath}: {e.Message}", e);
        }
    }

    /// <summary>Closes the file (after an fsync); the records stay readable in memory.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            try { _file?.Flush(flushToDisk: true); }
            catch (Exception e) when (e is IOException or ObjectDisposedException) { /* closing anyway; every line was handed to the OS */ }
            _file?.Dispose();
            _file = null;
        }
    }

    private sealed class BlockRecord
    {
        public LedgerStamp? Durable;
        public LedgerStamp? Acknowledged;
        public readonly List<LedgerStamp> Unacknowledged = new();
        public readonly List<LedgerStamp> SinceDurable = new();
        public LedgerBlock ToBlock(long offset) => new(offset, Durable, Acknowledged, Unacknowledged.ToList(), SinceDurable.ToList());
    }
}
