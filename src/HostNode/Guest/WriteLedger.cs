using System.Globalization;
using System.Text;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Guest;

/// <summary>A write as the ledger knows it: enough to recognise the exact block it put on the disk.</summary>
public readonly record struct LedgerStamp(long Sequence, ulong Checksum)
{
    public override string ToString() => $"seq {Sequence} (checksum {Checksum:x16})";
}

/// <summary>What one block may hold: its last acknowledged write, or any write sent after it whose fate is unknown.</summary>
/// <param name="Acknowledged">The last write the server acknowledged, or null when every write to it is in doubt.</param>
/// <param name="InDoubt">Writes sent after <paramref name="Acknowledged"/> and never acknowledged (the connection died under them).</param>
public sealed record LedgerBlock(long Offset, LedgerStamp? Acknowledged, IReadOnlyList<LedgerStamp> InDoubt)
{
    public bool Accepts(long sequence, ulong checksum) =>
        Acknowledged is { } a && a.Sequence == sequence && a.Checksum == checksum
        || InDoubt.Any(d => d.Sequence == sequence && d.Checksum == checksum);
}

/// <summary>
/// Every write of a guest workload to one drive: a write is recorded as sent before it goes out and as
/// acknowledged when the server says so, so a write whose connection died under it stays "in doubt"
/// and the verifier accepts either the block's previous stamp or that one, never anything else.
/// With a file, each record is appended as a line and handed to the OS at once, so another process
/// can <see cref="Load"/> and verify it later, even if the writer was killed.
/// </summary>
/// <remarks>
/// File format: a header line <c>LSM-WRITE-LEDGER v1 drive=&lt;image id&gt; block-size=&lt;bytes&gt;</c>, then
/// <c>W &lt;seq&gt; &lt;offset&gt; &lt;checksum hex&gt;</c> when a write is sent and <c>A &lt;seq&gt;</c> when it is acknowledged.
/// </remarks>
public sealed class WriteLedger : IDisposable
{
    private const string HeaderPrefix = "LSM-WRITE-LEDGER v1";

    private readonly object _gate = new();
    private readonly Dictionary<long, BlockRecord> _blocks = new();
    private readonly Dictionary<long, (long Offset, ulong Checksum)> _unacknowledged = new();
    private FileStream? _file;
    private long _lastSequence;
    private long _acknowledgedWrites;

    private WriteLedger(ImageId drive, int blockSize, string? path)
    {
        BlockStamp.ValidateBlockSize(blockSize);
        Drive = drive;
        BlockSize = blockSize;
        FilePath = path;
    }

    public ImageId Drive { get; }
    public int BlockSize { get; }
    /// <summary>The file the ledger appends to or was loaded from; null for an in-memory ledger.</summary>
    public string? FilePath { get; }
    /// <summary>False for a ledger <see cref="Load"/>ed to verify: it only reads.</summary>
    public bool IsWritable => _file is not null || FilePath is null;

    /// <summary>The highest sequence number recorded; a new workload on this ledger continues after it.</summary>
    public long LastSequence { get { lock (_gate) return _lastSequence; } }
    public int BlockCount { get { lock (_gate) return _blocks.Count; } }
    /// <summary>Writes sent and never acknowledged.</summary>
    public int InDoubtCount { get { lock (_gate) return _unacknowledged.Count; } }
    public long AcknowledgedWrites { get { lock (_gate) return _acknowledgedWrites; } }

    /// <summary>A ledger kept in memory only (tests, or a verifier in the same process).</summary>
    public static WriteLedger InMemory(ImageId drive, int blockSize = BlockStamp.DefaultBlockSize) => new(drive, blockSize, null);

    /// <summary>
    /// Opens the ledger file to append to, creating it with its header when missing. An existing file must be for the
    /// same drive and block size; its records are loaded so sequence numbers keep growing.
    /// </summary>
    public static WriteLedger Open(string path, ImageId drive, int blockSize = BlockStamp.DefaultBlockSize)
    {
        WriteLedger ledger;
        if (File.Exists(path) && new FileInfo(path).Length > 0)
        {
            ledger = Load(path);
            if (ledger.Drive != drive || ledger.BlockSize != blockSize)
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"ledger {path} is for drive {ledger.Drive} with {ledger.BlockSize}-byte blocks, not drive {drive} with {blockSize}-byte blocks");
            ledger = ledger.Reopen();
        }
        else
        {
            ledger = new WriteLedger(drive, blockSize, path);
            ledger._file = OpenForAppend(path);
            ledger.AppendLine($"{HeaderPrefix} drive={drive} block-size={blockSize}");
        }
        return ledger;
    }

    private WriteLedger Reopen()
    {
        _file = OpenForAppend(FilePath!);
        return this;
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
    public static WriteLedger Load(string path)
    {
        string[] lines;
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            using var reader = new StreamReader(stream, Encoding.UTF8);
            var text = reader.ReadToEnd();
            lines = text.Split('\n');
            // A line without its newline was cut short by a writer that died mid-line: it never counted.
            if (lines.Length > 0)
                lines = lines[..^1];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OperationFailedException(ErrorCodes.IoError, $"cannot read write ledger {path}: {e.Message}", e);
        }

        if (lines.Length == 0 || !lines[0].StartsWith(HeaderPrefix, StringComparison.Ordinal))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"{path} is not a write ledger (no '{HeaderPrefix}' header)");
        var ledger = ParseHeader(path, lines[0]);
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
                    && ledger.ApplyAcknowledged(s),
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
        ImageId? drive = null;
        int? blockSize = null;
        foreach (var field in header[HeaderPrefix.Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            if (field.StartsWith("drive=", StringComparison.Ordinal))
                drive = ImageId.Parse(field["drive=".Length..]);
            else if (field.StartsWith("block-size=", StringComparison.Ordinal)
                     && int.TryParse(field["block-size=".Length..], NumberStyles.None, CultureInfo.InvariantCulture, out var size))
                blockSize = size;
        }
        if (drive is null || blockSize is null)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"write ledger {path} has a header without drive or block size: '{header}'");
        return new WriteLedger(drive.Value, blockSize.Value, path);
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
    public void RecordAcknowledged(BlockStamp stamp)
    {
        lock (_gate)
        {
            EnsureWritable();
            if (!ApplyAcknowledged(stamp.Sequence))
                throw new OperationFailedException(ErrorCodes.Conflict, $"write seq {stamp.Sequence} was acknowledged but never recorded as sent");
            AppendLine(string.Create(CultureInfo.InvariantCulture, $"A {stamp.Sequence}"));
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
        record.InDoubt.Add(new LedgerStamp(sequence, checksum));
        return true;
    }

    private bool ApplyAcknowledged(long sequence)
    {
        if (!_unacknowledged.Remove(sequence, out var sent))
            return false;
        var record = _blocks[sent.Offset];
        // A newer acknowledged write supersedes it and every older write still in doubt on that block.
        if (record.Acknowledged is null || record.Acknowledged.Value.Sequence < sequence)
            record.Acknowledged = new LedgerStamp(sequence, sent.Checksum);
        record.InDoubt.RemoveAll(d => d.Sequence <= sequence);
        foreach (var superseded in _unacknowledged.Where(u => u.Value.Offset == sent.Offset && u.Key < sequence).Select(u => u.Key).ToList())
            _unacknowledged.Remove(superseded);
        _acknowledgedWrites++;
        return true;
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

    /// <summary>Closes the file; the records stay readable in memory.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            _file?.Dispose();
            _file = null;
        }
    }

    private sealed class BlockRecord
    {
        public LedgerStamp? Acknowledged;
        public readonly List<LedgerStamp> InDoubt = new();
        public LedgerBlock ToBlock(long offset) => new(offset, Acknowledged, InDoubt.ToList());
    }
}
